"""Digest of a source file without re-reading it when (size, mtime, inode) are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from buildsys.hashing import digest_file
from buildsys.store.index import Index


class StatCache:
    def __init__(self, index: Index, blob_root: Path | None = None) -> None:
        self.index = index
        self.blob_root = str(blob_root.resolve()) + os.sep if blob_root else None
        self._memo: dict[str, str] = {}

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
        st = os.stat(key)
        # mtime_ns and inode catch edits even when the size stays the same; ctime catches a
        # `touch -d` back to the old mtime — but only for sources: a blob's ctime moves every
        # time it is hardlinked into a build directory, and re-hashing a gigabyte of blobs on
        # the next no-op for that would be pointless (`cache verify` re-hashes everything).
        blob = self.blob_root is not None and key.startswith(self.blob_root)
        fingerprint = [st.st_size, st.st_mtime_ns, 0 if blob else st.st_ctime_ns, st.st_ino]
        entry = self.index.get_stat(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint \
                and isinstance(entry.get("digest"), str):
            digest = str(entry["digest"])
        else:
            digest = digest_file(Path(key))
            self.index.set_stat(key, {"fingerprint": fingerprint, "digest": digest})
        if snapshot:
            self._memo[key] = digest
        return digest

    def changed(self, path: Path, expected: str) -> bool:
        """True when the file no longer holds the bytes whose digest is `expected` (or is
        gone): cheap (one stat) unless the file was touched."""
        try:
            return self.digest(path, snapshot=False) != expected
        except OSError:
            return True
