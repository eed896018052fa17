"""Digest of a source file without re-reading it when (size, mtime, inode) are unchanged.

Entries are written to the index in batches (every `FLUSH_EVERY` entries, and when the store
closes): a stage touches several, and an entry lost to a killed build only costs a re-hash.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from buildsys.hashing import digest_file
from buildsys.store.index import Index


def _fingerprint(st: os.stat_result) -> list[int]:
    # mtime_ns and inode catch edits even when the size stays the same; ctime catches a write
    # whose mtime was put back (`touch -d`, a tool that preserves times).
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _without_ctime(fingerprint: list[int]) -> list[int]:
    size, mtime_ns, _ctime_ns, inode = fingerprint
    return [size, mtime_ns, inode]


FLUSH_EVERY = 256


class StatCache:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._memo: dict[str, str] = {}
        self._pending: dict[str, dict[str, Any]] = {}  # written here, not yet to the index
        self._lock = threading.Lock()
        self._real_dirs: dict[str, str] = {}  # a directory as given → its resolved path
        # The fingerprint each snapshot digest was taken at: what a plan read, for the plan
        # cache (a file edited after it was hashed must not be stamped as seen).
        self.snapshot_fingerprints: dict[str, list[int]] = {}

    def digest(self, path: Path, *, snapshot: bool = True) -> str:
        """The file's content digest.

        snapshot=True (source files): the digest this process first saw for the path, so one
        build keys every stage on one consistent snapshot of its sources. snapshot=False
        (blobs, re-checks): the file as it is now — a blob damaged while the build runs, or a
        source edited while a stage ran, must be noticed. Either way a file is re-read only
        when its stat fingerprint changed.
        """
        key = self._key(path)
        if snapshot and key in self._memo:
            return self._memo[key]
        fingerprint = _fingerprint(os.stat(key))
        entry = self._get(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint \
                and isinstance(entry.get("digest"), str):
            digest = str(entry["digest"])
        else:
            digest = digest_file(Path(key))
            self._set(key, {"fingerprint": fingerprint, "digest": digest})
        if snapshot:
            self._memo[key] = digest
            self.snapshot_fingerprints[key] = fingerprint
        return digest

    def vouch(self, path: Path, digest: str) -> None:
        """Record that the file now holds `digest`: for bytes this process has just hashed."""
        key = self._key(path)
        self._set(key, {"fingerprint": _fingerprint(os.stat(key)), "digest": digest})

    def carry_over(self, path: Path, before: os.stat_result) -> None:
        """Our own hardlink or unlink of the file moved its ctime (and nothing else): if the
        file was unchanged since it was last hashed, keep its digest under the new fingerprint,
        so the next build does not re-hash a gigabyte of blobs for links it made itself."""
        key = self._key(path)
        entry = self._get(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == _fingerprint(before):
            after = _fingerprint(os.stat(key))
            if _without_ctime(after) == _without_ctime(entry["fingerprint"]):
                self._set(key, {**entry, "fingerprint": after})

    def changed(self, path: Path, expected: str) -> bool:
        """True when the file no longer holds the bytes whose digest is `expected` (or is
        gone): cheap (one stat) unless the file was touched."""
        try:
            return self.digest(path, snapshot=False) != expected
        except OSError:
            return True

    def flush(self) -> None:
        """Write the pending entries to the index (one transaction)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.index.set_stats(pending)

    def _key(self, path: Path) -> str:
        """The file's resolved path, resolving each directory once per process (a stage
        touches a few files in a few directories; resolving walks every component)."""
        directory, name = os.path.split(os.fspath(path))
        if not os.path.isabs(directory):  # relative to a working directory that may change
            return os.path.realpath(path)
        real = self._real_dirs.get(directory)
        if real is None:
            real = self._real_dirs[directory] = os.path.realpath(directory)
        full = os.path.join(real, name)
        return os.path.realpath(full) if os.path.islink(full) else full

    def _get(self, key: str) -> Any:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
        return self.index.get_stat(key)

    def _set(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._pending[key] = value
            full = len(self._pending) >= FLUSH_EVERY
        if full:
            self.flush()
