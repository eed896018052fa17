"""What a failed qai_hub call means: no token, a rejected request, or a transient failure
worth retrying (the client retries those a bounded number of times with back-off)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from buildsys.errors import StageError


class HubRejected(StageError):
    """AI Hub answered with a user error (bad input, unknown id, ...)."""


@dataclass(frozen=True)
class HubErrors:
    error: type[BaseException]
    user: type[BaseException]
    internal: type[BaseException]
    rate_limited: type[BaseException]
    api: type[BaseException]
    transport: tuple[type[BaseException], ...]


@functools.cache
def hub_errors() -> HubErrors:
    # Always the REAL exception classes (an autospec'd module only has mocks of them).
    import requests
    from qai_hub.client import Error, InternalError, RateLimitedError, UserError
    from qai_hub.public_rest_api import APIException

    return HubErrors(
        error=Error,
        user=UserError,
        internal=InternalError,
        rate_limited=RateLimitedError,
        api=APIException,
        transport=(
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            ConnectionError,
            TimeoutError,
        ),
    )


_TOKEN_ERROR_MARKERS = (
    "failed to load client configuration",
    "failed to load configuration file",
    "failed to authenticate",
    "please provide client configuration",
    "api token",
    "api authentication failure",
)

ErrorKind = Literal["token", "user", "transient", "rate_limited", "other"]


def classify(exc: BaseException) -> ErrorKind:
    errors = hub_errors()
    text = str(exc).lower()
    if isinstance(exc, errors.rate_limited):
        return "rate_limited"
    if isinstance(exc, errors.internal):
        return "transient"
    if isinstance(exc, errors.user):
        return "token" if any(m in text for m in _TOKEN_ERROR_MARKERS) else "user"
    if isinstance(exc, errors.api):
        code = getattr(exc, "status_code", None) or 0
        if code == 429:
            return "rate_limited"
        if code >= 500:
            return "transient"
        if code == 401:
            return "token"
        return "user"
    if isinstance(exc, errors.transport):
        return "transient"
    if isinstance(exc, errors.error):
        return "user"
    return "other"


def is_connect_failure(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return True
    return isinstance(exc, hub_errors().internal) and "could not connect" in str(exc).lower()


_BOX_CHARS = set("┌┐└┘─│| ")


def plain(text: str) -> str:
    """Flatten qai_hub's boxed multi-line messages into one line."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or set(line) <= _BOX_CHARS:
            continue
        parts.append(line.strip("|│ ").strip())
    return re.sub(r"\s+", " ", " ".join(parts)).strip()
