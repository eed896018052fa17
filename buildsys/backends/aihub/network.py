"""Is AI Hub reachable from here at all? Answered in a fraction of a second.

qai_hub retries a failed connection itself for tens of seconds, and our own bounded retries
multiply that: on a machine with no network a build would wait minutes before failing. A host
name that does not resolve, with no proxy that would resolve it for us, is not a transient
error worth retrying: we say so at once and point at `--offline`.
"""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit

OFFLINE_HELP = "build without the AI Hub stages with `--offline` (or MODELBUILD_AIHUB=off)"


def _proxy_configured() -> bool:
    """requests sends through a proxy from the environment; the proxy then resolves names."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("https", "all"))


def unreachable_reason(api_url: str) -> str | None:
    """Why AI Hub cannot be reached, or None when it may be (the calls then decide)."""
    try:
        parts = urlsplit(api_url)
        host, port = parts.hostname, parts.port or 443
    except ValueError:  # a malformed api_url: qai_hub's own call will say what is wrong
        return None
    if not host or _proxy_configured():
        return None
    try:
        socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        return (f"cannot reach Qualcomm AI Hub: its host {host} does not resolve "
                f"({exc.strerror}); is this machine offline? Check the network, or "
                f"{OFFLINE_HELP}")
    except (OSError, UnicodeError):
        return None  # not a resolver verdict: let the calls and their retries decide
    return None
