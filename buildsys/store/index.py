"""The action cache: stage key → stage record (JSON), plus small per-machine tables.

Backed by diskcache (SQLite, safe across processes). Values are JSON text so a record can be
copied to a remote store as is. A damaged database is moved aside and a fresh one started: the
blobs survive, the affected stages simply run again.

SQLite notices damage to its own structure, not to the values it stores, so every value is
written with the sha256 of its JSON text and checked when read: a value altered on disk (bit
rot, a stray write) reads as absent — the stage runs again — never as a different record.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

from buildsys.errors import StoreError
from buildsys.store.record import StageRecord, record_problem

RECORD = "ac:"
LAST_KEY = "last:"
STAT = "stat:"
SEEN_REMOTE = "seen-remote:"


# Errors that say nothing about the file's contents: the disk, locks, permissions, memory.
_ENVIRONMENT = ("SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_PERM",
                "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_NOMEM", "SQLITE_INTERRUPT",
                "SQLITE_NOLFS", "SQLITE_AUTH", "SQLITE_PROTOCOL")
_ENVIRONMENT_TEXT = ("disk is full", "locked", "disk i/o", "readonly", "unable to open",
                     "out of memory", "interrupted")


def _is_corruption(exc: sqlite3.Error) -> bool:
    """Damage to the database file — its pages, its schema (diskcache's own tables missing a
    column), undecodable text — as opposed to a full disk, a lock timeout or I/O trouble,
    which must not get a healthy index thrown away."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return not name.startswith(_ENVIRONMENT)
    text = str(exc).lower()
    return not any(t in text for t in _ENVIRONMENT_TEXT)


def _seal(value: Any) -> str:
    body = json.dumps(value, sort_keys=True)
    return json.dumps({"json": body, "sha256": hashlib.sha256(body.encode()).hexdigest()})


INTACT, LEGACY, DAMAGED = "intact", "legacy", "damaged"


def _unseal(raw: Any) -> tuple[str, Any]:
    """(INTACT, value); (LEGACY, None) for JSON written before values were sealed (read as
    absent: those stages run once more); (DAMAGED, None) when the seal does not match."""
    try:
        outer = json.loads(raw)
    except (TypeError, ValueError):
        return DAMAGED, None
    if not (isinstance(outer, dict) and set(outer) == {"json", "sha256"}):
        return LEGACY, None
    body = outer["json"]
    try:
        if hashlib.sha256(body.encode()).hexdigest() != outer["sha256"]:
            return DAMAGED, None
        return INTACT, json.loads(body)
    except (AttributeError, TypeError, ValueError):
        return DAMAGED, None


GENERATION_FILE = "generation"


class Index:
    def __init__(self, root: Path) -> None:
        self.path = root / "index"
        # A fresh random token whenever a record is written or removed or the database is
        # replaced: the plan cache (plan/plan_cache.py) trusts a stamp only while the token
        # it saw is still there. (The database's own mtime moves on every checkpoint.)
        self.generation_path = self.path / GENERATION_FILE
        self._generation_lock = threading.Lock()
        self._token = self._read_generation()  # the last token this process saw or wrote
        self.foreign_changes = False  # another process changed records while we had it open
        self._bumped = False
        self.damage: list[str] = []  # what was found damaged (and replaced) in this process
        self._guard = threading.Lock()
        self._cache = self._open()

    def _connect(self) -> Any:
        import diskcache

        return diskcache.Cache(str(self.path), timeout=60, size_limit=2**40,
                               eviction_policy="none")

    def _open(self) -> Any:
        try:
            cache = self._connect()
            cache.get("probe")  # touches the database: raises if it is damaged
            return cache
        except sqlite3.Error as exc:
            if not _is_corruption(exc):
                raise StoreError(f"cannot open the cache index {self.path}: {exc}") from exc
            return self._start_afresh(exc)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # diskcache reads its settings from the database: damaged rows there fail in
            # Python rather than in SQLite
            return self._start_afresh(exc)

    def _start_afresh(self, exc: Exception) -> Any:
        aside = self._move_aside()
        where = f"moved to {aside}" if aside else "another process moved it aside"
        message = (f"cache index {self.path} was damaged ({exc}); {where}, starting a new "
                   f"index (stages will run again)")
        self.damage.append(message)
        warnings.warn(message, stacklevel=3)
        cache = self._connect()
        self.bump_generation()
        return cache

    def _recover(self, exc: Exception, damaged: Any) -> None:
        """Replace the damaged database (once, whichever thread notices first)."""
        with self._guard:
            if self._cache is not damaged:
                return
            damaged.close()
            self._cache = self._start_afresh(exc)

    def _move_aside(self) -> Path | None:
        n = 0
        while (aside := self.path.with_name(f"index.damaged-{n}")).exists():
            n += 1
        try:
            self.path.rename(aside)
        except FileNotFoundError:
            return None
        return aside

    def close(self) -> None:
        self._cache.close()

    def _get(self, key: str) -> Any:
        for attempt in (1, 2):
            cache = self._cache
            try:
                raw = cache.get(key)
                break
            except sqlite3.Error as exc:
                if attempt == 1 and _is_corruption(exc):
                    self._recover(exc, cache)
                    continue
                warnings.warn(f"cache index read failed for {key[:40]}: {exc}", stacklevel=2)
                return None
            except (OSError, ValueError) as exc:  # a value diskcache keeps in a file
                warnings.warn(f"cache index entry {key[:40]} is unreadable ({exc}); "
                              f"ignoring it", stacklevel=2)
                return None
        if raw is None:
            return None
        state, value = _unseal(raw)
        if state == DAMAGED:
            warnings.warn(f"cache index entry {key[:40]} is damaged; ignoring it", stacklevel=2)
        return value

    def _set(self, key: str, value: Any) -> None:
        sealed = _seal(value)
        for attempt in (1, 2):
            cache = self._cache
            try:
                cache.set(key, sealed)
                return
            except sqlite3.Error as exc:
                if attempt == 1 and _is_corruption(exc):
                    self._recover(exc, cache)
                    continue
                raise StoreError(f"cannot write to the cache index {self.path}: {exc}") from exc
            except OSError as exc:
                raise StoreError(f"cannot write to the cache index {self.path}: {exc}") from exc

    def _delete(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot write to the cache index {self.path}: {exc}") from exc

    # stage records
    def get_record(self, stage_key: str) -> StageRecord | None:
        record = self._get(RECORD + stage_key)
        if record is None or record_problem(record, stage_key) is None:
            return record
        warnings.warn(f"cache index record {stage_key[:12]} is not a valid record; ignoring it",
                      stacklevel=2)
        return None

    def put_record(self, stage_key: str, record: StageRecord) -> None:
        # Before the first record this process writes (a reader never pairs the old token
        # with new records); once is enough: a record added never makes a stage that was up
        # to date stale, and another process's token since then is noticed when this one
        # vouches for the records (`generation`). Removals bump every time.
        if not self._bumped:
            self.bump_generation()
            self._bumped = True
        self._set(RECORD + stage_key, record)

    def delete_record(self, stage_key: str) -> None:
        self.bump_generation()
        self._delete(RECORD + stage_key)

    def _read_generation(self) -> str | None:
        try:
            return self.generation_path.read_text()
        except OSError:
            return None

    def bump_generation(self) -> str:
        with self._generation_lock:  # stage threads store records at once
            if self._read_generation() != self._token:
                self.foreign_changes = True
            token = os.urandom(16).hex()
            tmp = self.generation_path.with_name(f".{GENERATION_FILE}.{os.getpid()}")
            try:
                tmp.write_text(token)
                os.replace(tmp, self.generation_path)
            except OSError as exc:
                raise StoreError(f"cannot write to the cache index {self.path}: {exc}") \
                    from exc
            self._token = token
            return token

    def generation(self) -> str | None:
        """The token that describes the records as this process left them; None when
        another process changed records meanwhile (then this process cannot vouch for
        them)."""
        current = self._read_generation()
        if current is None and self._token is None:
            return self.bump_generation()
        return current if current == self._token and not self.foreign_changes else None

    def records(self) -> dict[str, StageRecord]:
        out = {}
        for key in self._keys():
            if key.startswith(RECORD):
                record = self.get_record(key[len(RECORD):])
                if record is not None:
                    out[key[len(RECORD):]] = record
        return out

    def _keys(self) -> list[str]:
        cache = self._cache
        try:
            return [k for k in cache.iterkeys() if isinstance(k, str)]
        except sqlite3.Error as exc:
            if not _is_corruption(exc):
                raise StoreError(f"cannot read the cache index {self.path}: {exc}") from exc
            self._recover(exc, cache)
            return []

    def check(self) -> list[str]:
        """Re-check everything (for `cache verify`): the database's own integrity, then every
        value's checksum. A damaged database is replaced; damaged entries are deleted."""
        problems: list[str] = []
        try:
            con = sqlite3.connect(self.path / "cache.db", timeout=60)
            try:
                rows = con.execute("PRAGMA integrity_check").fetchall()
            finally:
                con.close()
            if rows != [("ok",)]:
                raise sqlite3.DatabaseError("; ".join(str(r[0]) for r in rows[:5]))
        except sqlite3.Error as exc:
            if not _is_corruption(exc):
                raise StoreError(f"cannot check the cache index {self.path}: {exc}") from exc
            self._recover(exc, self._cache)
        problems.extend(self.damage)
        for key in self._keys():
            try:
                raw = self._cache.get(key)
            except (sqlite3.Error, OSError, ValueError):
                raw = None
            state, value = _unseal(raw) if raw is not None else (DAMAGED, None)
            if state == INTACT and key.startswith(RECORD) and record_problem(
                    value, key[len(RECORD):]) is not None:
                state = DAMAGED
            if state != INTACT:
                if key.startswith(RECORD):
                    self.bump_generation()
                self._delete(key)  # a legacy entry is dropped quietly: it was not damage
            if state == DAMAGED:
                problems.append(f"damaged index entry {key[:60]} (removed)")
        return problems

    # which key a stage id had last time (to explain why it runs again)
    def get_last_key(self, stage_id: str) -> str | None:
        return self._get(LAST_KEY + stage_id)

    def set_last_key(self, stage_id: str, stage_key: str) -> None:
        self._set(LAST_KEY + stage_id, stage_key)

    # records a remote cache answered with, whose blobs were not downloaded (machine-local)
    def get_seen_remote(self, stage_key: str) -> Any:
        return self._get(SEEN_REMOTE + stage_key)

    def set_seen_remote(self, stage_key: str, record: StageRecord) -> None:
        self._set(SEEN_REMOTE + stage_key, record)

    def forget_seen_remote_key(self, stage_key: str) -> None:
        self._delete(SEEN_REMOTE + stage_key)

    def forget_seen_remote(self, keep: set[str]) -> int:
        """Drop remembered remote records except those of these keys; how many went."""
        gone = [k for k in self._keys()
                if k.startswith(SEEN_REMOTE) and k[len(SEEN_REMOTE):] not in keep]
        for key in gone:
            self._delete(key)
        return len(gone)

    # stat cache entries
    def get_stat(self, path: str) -> Any:
        return self._get(STAT + path)

    def set_stat(self, path: str, value: Any) -> None:
        self._set(STAT + path, value)

    def set_stats(self, entries: dict[str, Any]) -> None:
        """Many stat entries in one transaction (one commit instead of one per entry)."""
        try:
            with self._cache.transact():
                for path, value in entries.items():
                    self._cache.set(STAT + path, _seal(value))
            return
        except (sqlite3.Error, OSError):
            pass  # entry by entry, as _set does: it repairs a damaged index or says why not
        for path, value in entries.items():
            self._set(STAT + path, value)
