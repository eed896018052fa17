"""Digest of a source file without re-reading it when (size, mtime, inode) are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from buildsys.hashing import digest_file
from buildsys.store.index import Index


class StatCache:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._memo: dict[str, str] = {}

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        if key in self._memo:
            return self._memo[key]
        st = os.stat(key)
        # mtime_ns and inode catch edits even when the size stays the same; ctime catches a
        # `touch -d` back to the old mtime.
        fingerprint = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.index.get_stat(key)
        if entry and entry.get("fingerprint") == fingerprint:
            digest = str(entry["digest"])
        else:
            digest = digest_file(Path(key))
            self.index.set_stat(key, {"fingerprint": fingerprint, "digest": digest})
        self._memo[key] = digest
        return digest
