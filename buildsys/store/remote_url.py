"""Where a remote cache lives: a URL → an obstore object store, with credentials from the
standard places and a name for messages that never carries a secret.

    s3://BUCKET[/PREFIX][?endpoint=http://host:port&region=R]   any S3-compatible store
    file:///shared/cache  or  /shared/cache                      a directory (shared disk, NFS)

S3 credentials come from what every AWS tool reads: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION; or a profile (AWS_PROFILE, ~/.aws) through
boto3 when it is installed. None of it is ever put in a URL, a message or a record.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from buildsys.errors import UsageError

# Bounded waits: a dead or stalled remote costs seconds once, never a hung build.
CONNECT_TIMEOUT = "3s"
REQUEST_TIMEOUT = "10s"  # metadata: HEAD, records (a few hundred bytes)
READ_STALL_TIMEOUT = "30s"  # blob transfers: no overall limit, but no byte for this long fails
RETRIES = {"max_retries": 2, "retry_timeout": timedelta(seconds=6),
           "backoff": {"init_backoff": timedelta(milliseconds=100),
                       "max_backoff": timedelta(seconds=2), "base": 2}}
_QUERY_KEYS = {"endpoint", "region"}
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class RemoteLocation:
    """A checked remote URL. The obstore handles behind it are made on first use, so a build
    that never needs the remote does not even load the client."""

    def __init__(self, name: str, connect: Callable[[], tuple[Any, Any]]) -> None:
        self.name = name  # for messages: the URL without credentials
        self._connect = connect
        self._stores: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def _open(self) -> tuple[Any, Any]:
        with self._lock:
            if self._stores is None:
                self._stores = self._connect()
            return self._stores

    @property
    def metadata(self) -> Any:
        """For small requests: HEAD, records (short overall timeout)."""
        return self._open()[0]

    @property
    def transfers(self) -> Any:
        """For blob bodies: no overall limit, but a stall timeout."""
        return self._open()[1]


def redact(text: str) -> str:
    """The text with every credential this process knows about blanked out."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"://[^/@\s]+@", "://***@", text)  # user:password@host


def open_location(url: str) -> RemoteLocation:
    url = url.strip()
    if not url:
        raise UsageError("--remote: empty URL")
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return _directory(Path(parts.path if parts.scheme == "file" else url))
    if parts.scheme == "s3":
        return _s3(url)
    raise UsageError(f"--remote {redact(url)!r}: expected s3://BUCKET[/PREFIX] or a directory "
                     f"(file:///path or /path)")


def _directory(path: Path) -> RemoteLocation:
    path = path.expanduser().resolve()

    def connect() -> tuple[Any, Any]:
        from obstore.store import LocalStore

        path.mkdir(parents=True, exist_ok=True)  # an OSError here: the remote is unavailable
        store = LocalStore(str(path))
        return store, store

    return RemoteLocation(str(path), connect)


def _s3(url: str) -> RemoteLocation:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise UsageError("--remote: put credentials in AWS_* variables or a profile, "
                         "not in the URL")
    bucket = parts.netloc
    if not bucket:
        raise UsageError(f"--remote {url!r}: no bucket (s3://BUCKET[/PREFIX])")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        raise UsageError(f"--remote {redact(url)!r}: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_QUERY_KEYS))})")
    endpoint = query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    config: dict[str, Any] = {"checksum_algorithm": "sha256"}  # the server checks our bytes
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
    region = query.get("region") or os.environ.get("AWS_REGION") \
        or os.environ.get("AWS_DEFAULT_REGION")
    config["region"] = region or "us-east-1"
    prefix = parts.path.strip("/") or None
    options = {"allow_http": bool(endpoint and endpoint.startswith("http://")),
               "connect_timeout": CONNECT_TIMEOUT}

    def connect() -> tuple[Any, Any]:
        from obstore.store import S3Store

        provider = _profile_credentials()

        def make(extra: dict[str, str]) -> Any:
            return S3Store(bucket, prefix=prefix, config=config,  # type: ignore[arg-type]
                           client_options={**options, **extra},  # type: ignore[typeddict-item]
                           retry_config=RETRIES,  # type: ignore[arg-type]
                           credential_provider=provider)

        return make({"timeout": REQUEST_TIMEOUT}), make({"read_timeout": READ_STALL_TIMEOUT})

    shown = f"s3://{bucket}/{prefix or ''}".rstrip("/") + (f" at {endpoint}" if endpoint else "")
    return RemoteLocation(redact(shown), connect)


def _profile_credentials() -> Any:
    """A boto3 credential provider when keys are not in the environment but a profile may
    hold them (AWS_PROFILE, ~/.aws/credentials, SSO); None to let obstore read AWS_* itself."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    has_profile = bool(os.environ.get("AWS_PROFILE")) or \
        (Path.home() / ".aws" / "credentials").exists() or \
        (Path.home() / ".aws" / "config").exists()
    if not has_profile:
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        if os.environ.get("AWS_PROFILE"):
            raise UsageError("AWS_PROFILE is set but boto3 is not installed: "
                             "pip install boto3, or set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY") from None
        return None
    try:
        return Boto3CredentialProvider(boto3.Session())
    except Exception as exc:  # no credentials in the profile: say so, without its contents
        raise UsageError(f"AWS profile credentials unusable: {type(exc).__name__}") from None
