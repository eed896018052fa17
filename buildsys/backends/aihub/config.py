"""The qai_hub client configuration and its API token, read without any network access.

Mirrors qai_hub 0.56 (`api_utils.get_config_path` / `load_api_config_from_file`): the INI file
`$QAIHUB_CLIENT_INI` if set, else `~/.qai_hub/client.ini`, section `[api]` with `api_token`,
`api_url`, `web_url`. The token never appears in a message: the file and the parser's own
errors (which quote file lines) are never shown, and errors are raised `from None`.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import StageError

CONFIG_ENV = "QAIHUB_CLIENT_INI"
DEFAULT_CONFIG_PATH = "~/.qai_hub/client.ini"
_REQUIRED_KEYS = ("api_token", "api_url", "web_url")
DEFAULT_WEB_URL = "https://workbench.aihub.qualcomm.com"
TOKEN_HELP = (
    "run `qai-hub configure --api_token <your token>` (the token is on your AI Hub account "
    "page), then rerun the build"
)
REDACTED = "<redacted>"


@dataclass(frozen=True)
class HubConfig:
    path: Path
    token: str = field(repr=False)
    web_url: str
    api_url: str = ""


def config_path() -> Path:
    # Same precedence as qai_hub 0.56 api_utils.get_config_path(profile=None).
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)))


class TokenError(StageError):
    """No usable API token: nothing AI Hub can do will work."""


def token_message(reason: str) -> str:
    return (
        f"Qualcomm AI Hub is not configured: {reason}. To fix it, {TOKEN_HELP}. "
        f"(qai_hub reads ${CONFIG_ENV} if set, else {DEFAULT_CONFIG_PATH}.)"
    )


def load_config() -> HubConfig:
    """Read the qai_hub client config without any network access; StageError if unusable.

    Never quotes the file or a parser error: both may contain the token.
    """
    path = config_path()
    if not path.is_file():
        raise TokenError(token_message(f"no configuration file at {path}"))
    parser = configparser.ConfigParser()  # the interpolating parser qai_hub itself uses
    try:
        parser.read([path], encoding="utf-8")
    except (configparser.Error, OSError, UnicodeError):
        raise TokenError(token_message(f"{path} is not a readable INI file")) from None
    if not parser.has_section("api"):
        raise TokenError(token_message(f"{path} has no [api] section"))
    section = parser["api"]
    missing = [key for key in _REQUIRED_KEYS if key not in section]
    if missing:
        raise TokenError(token_message(f"{path} has no {', '.join(missing)} in [api]"))
    try:
        token = section["api_token"]
        web_url = section["web_url"]
        api_url = section["api_url"]
    except (configparser.Error, ValueError):
        raise TokenError(
            token_message(f"qai_hub cannot read the [api] values in {path} (a stray '%'?)")
        ) from None
    if not token.strip():
        raise TokenError(token_message(f"the api_token in {path} is empty"))
    return HubConfig(path=path, token=token.strip(), web_url=web_url.strip() or DEFAULT_WEB_URL,
                      api_url=api_url.strip())


def check_token(hub: Any = None) -> None:
    """Raise ``StageError`` (no network) unless qai_hub has an API token configured.

    ``hub`` is accepted so callers can pass the module object they use; the check reads only the
    configuration file that qai_hub's module-level functions read.
    """
    del hub
    load_config()


def check_reachable() -> None:
    """Raise ``StageError`` at once if AI Hub's host does not resolve (no network, no proxy)."""
    from buildsys.backends.aihub.network import unreachable_reason

    reason = unreachable_reason(load_config().api_url)
    if reason:
        raise StageError(reason)
