"""Digest of a source file without re-reading it when (size, mtime, inode) are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from buildsys.hashing import digest_file
from buildsys.store.index import Index


def _fingerprint(st: os.stat_result) -> list[int]:
    # mtime_ns and inode catch edits even when the size stays the same; ctime catches a write
    # whose mtime was put back (`touch -d`, a tool that preserves times).
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _without_ctime(fingerprint: list[int]) -> list[int]:
    size, mtime_ns, _ctime_ns, inode = fingerprint
    return [size, mtime_ns, inode]


class StatCache:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._memo: dict[str, str] = {}
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
        key = str(path.resolve())
        if snapshot and key in self._memo:
            return self._memo[key]
        fingerprint = _fingerprint(os.stat(key))
        entry = self.index.get_stat(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint \
                and isinstance(entry.get("digest"), str):
            digest = str(entry["digest"])
        else:
            digest = digest_file(Path(key))
            self.index.set_stat(key, {"fingerprint": fingerprint, "digest": digest})
        if snapshot:
            self._memo[key] = digest
            self.snapshot_fingerprints[key] = fingerprint
        return digest

    def vouch(self, path: Path, digest: str) -> None:
        """Record that the file now holds `digest`: for bytes this process has just hashed."""
        key = str(path.resolve())
        self.index.set_stat(key, {"fingerprint": _fingerprint(os.stat(key)), "digest": digest})

    def carry_over(self, path: Path, before: os.stat_result) -> None:
        """Our own hardlink or unlink of the file moved its ctime (and nothing else): if the
        file was unchanged since it was last hashed, keep its digest under the new fingerprint,
        so the next build does not re-hash a gigabyte of blobs for links it made itself."""
        key = str(path.resolve())
        entry = self.index.get_stat(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == _fingerprint(before):
            after = _fingerprint(os.stat(key))
            if _without_ctime(after) == _without_ctime(entry["fingerprint"]):
                self.index.set_stat(key, {**entry, "fingerprint": after})

    def changed(self, path: Path, expected: str) -> bool:
        """True when the file no longer holds the bytes whose digest is `expected` (or is
        gone): cheap (one stat) unless the file was touched."""
        try:
            return self.digest(path, snapshot=False) != expected
        except OSError:
            return True
