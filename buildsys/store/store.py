"""The store interface the rest of modelbuild uses: blobs by digest, records by stage key.

Nothing outside this package builds paths into the cache directory, so a remote tier (shared
directory, S3 via fsspec: `cas/<digest>`, `ac/<key>`) can later wrap `Store` with the same five
operations: has_blob / get_blob / put_blob / get_record / put_record.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from buildsys.store.blobs import BlobStore, owner_is_dead, owner_tag
from buildsys.store.index import Index
from buildsys.store.statcache import StatCache

CACHE_ENV = "MODELBUILD_CACHE_DIR"


def default_cache_dir(project_dir: Path, override: str | None = None) -> Path:
    chosen = override or os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser().resolve() if chosen else project_dir / ".cache"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(root)
        self.index = Index(root)
        self.stats = StatCache(self.index)

    def close(self) -> None:
        self.index.close()

    # blobs
    def has_blob(self, digest: str, size: int | None = None) -> bool:
        return self.blobs.has(digest, size)

    def get_blob(self, digest: str, dest: Path, *, verify: bool = True) -> None:
        blob = self.blobs.path_of(digest)
        before = self._stat(blob)
        self.blobs.materialise(digest, dest, verify=verify)
        if before is not None:
            self.stats.carry_over(blob, before)

    def put_blob(self, path: Path) -> str:
        digest = self.blobs.put_file(path)
        self.stats.vouch(self.blobs.path_of(digest), digest)  # hashed while it was stored
        return digest

    def remove_links(self, directory: Path, digests: list[str]) -> None:
        """Delete a scratch directory holding hardlinks of these blobs, keeping their stat
        fingerprints valid (an unlink moves a blob's ctime)."""
        blobs = [self.blobs.path_of(d) for d in digests]
        before = [self._stat(blob) for blob in blobs]
        shutil.rmtree(directory, ignore_errors=True)
        for blob, st in zip(blobs, before, strict=True):
            if st is not None:
                self.stats.carry_over(blob, st)

    @staticmethod
    def _stat(path: Path) -> os.stat_result | None:
        try:
            return path.stat()
        except OSError:
            return None

    # records
    def get_record(self, stage_key: str) -> dict[str, Any] | None:
        return self.index.get_record(stage_key)

    def put_record(self, stage_key: str, record: dict[str, Any]) -> None:
        """Callers put every output blob first: a record never points at a missing blob."""
        self.index.put_record(stage_key, record)

    def blob_ok(self, digest: str, size: int | None = None) -> bool:
        """Present, right size, and its bytes match its name.

        Re-hashes only when the blob file's stat fingerprint changed since it was last checked
        (any write to it, even through a hardlink in the build directory, changes its mtime);
        `cache verify` re-hashes everything. Never answered from a memo of an earlier check in
        this process: a blob damaged between planning and use must not reach a stage.
        """
        if not self.blobs.has(digest, size):
            return False
        return not self.stats.changed(self.blobs.path_of(digest), digest)

    def damaged_outputs(self, record: dict[str, Any]) -> list[str]:
        """Names of the record's outputs whose blobs are missing or corrupt."""
        return [name for name, o in record["outputs"].items()
                if not self.blob_ok(o["digest"], o["size"])]

    def new_scratch(self, label: str) -> Path:
        """A fresh private directory on the store's filesystem (so outputs hardlink in)."""
        base = self.root / "tmp" / "work"
        base.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[-60:]
        return Path(tempfile.mkdtemp(prefix=f"{safe}{owner_tag()}", dir=base))

    def sweep_tmp(self) -> list[Path]:
        """Remove the scratch directories and half-written blobs of builds that died without
        cleaning up (SIGKILL, OOM killer, power loss): their owner process is gone. Entries
        of live processes, of other machines sharing the store, or of unknown owners stay."""
        removed = []
        tmp = self.root / "tmp"
        for entry in [*tmp.glob("*"), *tmp.glob("work/*")]:
            if entry.name != "work" and owner_is_dead(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        return removed
