"""The action cache: stage key → stage record (JSON), plus small per-machine tables.

Backed by diskcache (SQLite, safe across processes). Values are JSON text so a record can be
copied to a remote store as is. A damaged database is moved aside and a fresh one started: the
blobs survive, the affected stages simply run again.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

RECORD = "ac:"
LAST_KEY = "last:"
JOB = "job:"
STAT = "stat:"


class Index:
    def __init__(self, root: Path) -> None:
        self.path = root / "index"
        self._cache = self._open()

    def _open(self) -> Any:
        import diskcache

        try:
            cache = diskcache.Cache(str(self.path), timeout=60, size_limit=2**40,
                                    eviction_policy="none")
            cache.get("probe")  # touches the database: raises if it is damaged
            return cache
        except sqlite3.DatabaseError as exc:
            aside = self._move_aside()
            warnings.warn(f"cache index {self.path} was damaged ({exc}); moved to {aside}, "
                          f"starting a new index (stages will run again)", stacklevel=2)
            return diskcache.Cache(str(self.path), timeout=60, size_limit=2**40,
                                   eviction_policy="none")

    def _move_aside(self) -> Path:
        n = 0
        while (aside := self.path.with_name(f"index.damaged-{n}")).exists():
            n += 1
        self.path.rename(aside)
        return aside

    def close(self) -> None:
        self._cache.close()

    def _get(self, key: str) -> Any:
        try:
            raw = self._cache.get(key)
        except sqlite3.DatabaseError as exc:
            warnings.warn(f"cache index read failed for {key[:40]}: {exc}", stacklevel=2)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            warnings.warn(f"cache index entry {key[:40]} is unreadable; ignoring it", stacklevel=2)
            return None

    def _set(self, key: str, value: Any) -> None:
        self._cache.set(key, json.dumps(value, sort_keys=True))

    # stage records
    def get_record(self, stage_key: str) -> dict[str, Any] | None:
        return self._get(RECORD + stage_key)

    def put_record(self, stage_key: str, record: dict[str, Any]) -> None:
        self._set(RECORD + stage_key, record)

    def delete_record(self, stage_key: str) -> None:
        self._cache.delete(RECORD + stage_key)

    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith(RECORD):
                record = self._get(key)
                if record is not None:
                    out[key[len(RECORD):]] = record
        return out

    # which key a stage id had last time (to explain why it runs again)
    def get_last_key(self, stage_id: str) -> str | None:
        return self._get(LAST_KEY + stage_id)

    def set_last_key(self, stage_id: str, stage_key: str) -> None:
        self._set(LAST_KEY + stage_id, stage_key)

    # remote jobs submitted for a stage key (AI Hub): resume instead of resubmitting
    def get_job(self, stage_key: str, name: str) -> Any:
        return self._get(f"{JOB}{stage_key}:{name}")

    def set_job(self, stage_key: str, name: str, value: Any) -> None:
        self._set(f"{JOB}{stage_key}:{name}", value)

    # stat cache entries
    def get_stat(self, path: str) -> Any:
        return self._get(STAT + path)

    def set_stat(self, path: str, value: Any) -> None:
        self._set(STAT + path, value)
