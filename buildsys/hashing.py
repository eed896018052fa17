"""Content digests and canonical serialisation: the one place that decides how bytes are hashed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ALGORITHM = "sha256"


def canonical_json(value: Any) -> bytes:
    """Serialise JSON-able data so equal values give equal bytes (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_bytes(data: bytes) -> str:
    return hashlib.new(ALGORITHM, data).hexdigest()


def digest_value(value: Any) -> str:
    return digest_bytes(canonical_json(value))


def digest_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, ALGORITHM).hexdigest()
