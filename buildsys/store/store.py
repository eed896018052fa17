"""The store interface the rest of modelbuild uses: blobs by digest, records by stage key.

Tiers: this machine's store (`cas/` + the index) is the first; an optional remote tier
(`store/remote.py`: S3-compatible or a shared directory) sits behind it with the same
operations — has / get / put a blob by digest, get / put a record by stage key. Callers ask
for records and blobs; nothing outside this package knows which tier answered or builds a
path into one. What is machine-local (stat cache, last keys, job memos) lives in
`self.machine` and is never shared.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import StoreError
from buildsys.store.blobs import BlobStore, owner_is_dead, owner_tag
from buildsys.store.index import Index
from buildsys.store.machine import MachineState
from buildsys.store.record import StageRecord
from buildsys.store.statcache import StatCache

if TYPE_CHECKING:
    from buildsys.store.remote import RemoteTier

CACHE_ENV = "MODELBUILD_CACHE_DIR"
_SCRATCH_NUMBERS = itertools.count()


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
        self.machine = MachineState(root, self.index)  # never shared with a remote tier
        self.remote: RemoteTier | None = None
        self._uploads: list[Future[None]] = []
        self._uploader: ThreadPoolExecutor | None = None
        self._uploads_lock = threading.Lock()

    def close(self) -> None:
        self.stats.flush()
        if self.remote is not None:
            self.finish_uploads()
            self.remote.close()
            if self._uploader is not None:
                self._uploader.shutdown(wait=True)
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
    def get_record(self, stage_key: str) -> StageRecord | None:
        return self.index.get_record(stage_key)

    def put_record(self, stage_key: str, record: StageRecord) -> None:
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

    def damaged_outputs(self, record: StageRecord) -> list[str]:
        """Names of the record's outputs whose blobs are missing or corrupt."""
        return [name for name, o in record["outputs"].items()
                if not self.blob_ok(o["digest"], o["size"])]

    def new_scratch(self, label: str) -> Path:
        """A fresh private directory on the store's filesystem (so outputs hardlink in)."""
        base = self.root / "tmp" / "work"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[-60:]
        while True:  # host, pid and a number: unique unless a dead namesake left it behind
            path = base / f"{safe}{owner_tag()}{next(_SCRATCH_NUMBERS)}"
            try:
                path.mkdir(mode=0o700)
                return path
            except FileNotFoundError:
                base.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                pass

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

    # --- the remote tier -----------------------------------------------------------------------
    def attach_remote(self, remote: RemoteTier) -> None:
        """Use a remote tier behind this store. Opening it makes no request: a build that
        finds everything here never talks to it."""
        self.remote = remote

    def remote_in_use(self) -> bool:
        return self.remote is not None and self.remote.available

    def find_remote_records(self, keys: Iterable[str]) -> dict[str, StageRecord]:
        """Records the remote holds for these keys (looked up concurrently, in one batch)
        whose every blob exists, here or on the remote: a record whose blob is gone is a miss.
        Records it answered before come from this machine's memory, without a request."""
        remote = self.remote
        keys = list(keys)
        # Answered before (and not downloaded): no request — and known even with no remote
        # at hand, so an offline no-op stays a no-op. Should its blobs be needed and gone,
        # fetching them fails and the stage runs after all.
        seen = {k: r for k in keys if (r := self.machine.seen_remote(k)) is not None}
        if remote is None or not remote.available or len(seen) == len(keys):
            return seen
        found = self._blobs_present(remote, remote.get_records(k for k in keys if k not in seen))
        for key, record in found.items():
            self.machine.remember_remote(key, record)
        return {**seen, **found}

    def _blobs_present(self, remote: RemoteTier,
                       records: dict[str, StageRecord]) -> dict[str, StageRecord]:
        wanted = {o["digest"]: o["size"] for r in records.values()
                  for o in r["outputs"].values() if not self.blobs.has(o["digest"], o["size"])}
        present = remote.has_blobs(wanted) if wanted else set()
        if not remote.available:  # it failed while we asked: misses, already warned about
            return {}
        usable = {}
        for key, record in records.items():
            gone = [n for n, o in record["outputs"].items()
                    if o["digest"] in wanted and o["digest"] not in present]
            if gone:
                warnings.warn(f"remote cache {remote.name}: record of {record['stage_id']} "
                              f"names missing blob(s) ({', '.join(gone[:3])}); a miss",
                              stacklevel=2)
            else:
                usable[key] = record
        return usable

    def fetch_blob(self, digest: str, size: int | None = None, label: str = "") -> bool:
        """Make a blob local, from the remote if needed; True when it is here and intact."""
        if self.blob_ok(digest, size):
            return True
        if not self.remote_in_use():
            return False
        assert self.remote is not None
        tmp = self.blobs.new_tmp("fetch")
        try:
            if not self.remote.get_blob(digest, size, tmp, label):
                return False
            self.blobs.adopt(tmp, digest)
        except StoreError as exc:  # our own disk: the stage then runs (and says so)
            warnings.warn(f"cannot keep a blob fetched from the remote cache: {exc}",
                          stacklevel=2)
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.vouch(self.blobs.path_of(digest), digest)  # hashed as it arrived
        return True

    def fetch(self, record: StageRecord) -> bool:
        """Download the record's blobs that are not here (verified as they stream), then
        keep the record: blobs first, record last. False when any blob could not be had."""
        outputs = list(record["outputs"].items())
        remote = self.remote
        if remote is not None and len(outputs) > 1:
            ok = all(remote.map(lambda item: self.fetch_blob(
                item[1]["digest"], item[1]["size"], item[0]), outputs))
        else:
            ok = all(self.fetch_blob(o["digest"], o["size"], n) for n, o in outputs)
        if ok:
            self.put_record(record["key"], record)
        return ok

    def push(self, stage_key: str, record: StageRecord,
             measurements: Iterable[str] = ()) -> None:
        """Upload a record's blobs, then the record (create-only), in the background."""
        if self.remote is None or not self.remote.writable or not self.remote.available:
            return
        from buildsys.store.remote import TRANSFERS

        with self._uploads_lock:  # stage threads finish (and push) concurrently
            if self._uploader is None:
                self._uploader = ThreadPoolExecutor(TRANSFERS, thread_name_prefix="upload")
            self._uploads.append(self._uploader.submit(
                self._upload, stage_key, record, tuple(measurements)))

    def _upload(self, stage_key: str, record: StageRecord,
                measurements: tuple[str, ...]) -> None:
        from buildsys.store.remote import DIFFERENT

        remote = self.remote
        assert remote is not None
        for name, output in sorted(record["outputs"].items()):
            digest = output["digest"]
            if not self.blob_ok(digest, output["size"]):
                return  # damaged here: never spread it (the next build rebuilds it)
            if not remote.put_blob(digest, self.blobs.path_of(digest), output["size"], name):
                return  # no record without its blobs
        outcome = remote.put_record(stage_key, record, ignore=measurements)
        if outcome is not None and outcome.startswith(DIFFERENT):
            warnings.warn(f"{record.get('stage_id', stage_key[:12])} is not deterministic: "
                          f"the remote cache already holds a result for key "
                          f"{stage_key[:12]} with other bytes for "
                          f"{outcome.split(': ', 1)[1]} (the remote's record is kept)",
                          stacklevel=2)

    def finish_uploads(self) -> None:
        """Wait for the background uploads (each request is bounded by its timeouts)."""
        with self._uploads_lock:
            pending, self._uploads = self._uploads, []
        wait_all(pending)
        for future in pending:
            exc = future.exception()
            if exc is not None:
                warnings.warn(f"upload to the remote cache failed: {exc}", stacklevel=2)

    def on_transfer(self, report: Callable[[str], None]) -> None:
        """Where lines about large transfers (bytes, rate) go."""
        if self.remote is not None:
            self.remote.on_progress = report
