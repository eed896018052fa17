"""The remote tier: stage records and blobs in an object store shared by many machines.

Layout, like Bazel's remote cache: `cas/<sha256>` for blobs, `ac/<AC_VERSION>/<stage key>` for
records (JSON). The same operations as the local store — has / get / put a blob by digest,
get / put a record by stage key — plus batched forms that run concurrently.

What comes back from the remote is untrusted: a record is refused unless it has exactly the
shape a record has (outputs naming only digests and sizes under plain relative names), and a
blob is hashed while it streams to disk and dropped if its bytes do not match its name.

Best effort, bounded: every request has a timeout and a few retries; the first failure that
is not a plain "not there" marks the remote unavailable for the rest of the process, with one
warning, and every later operation answers "miss" at once. A build never waits on a dead
remote for more than one request's retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import StoreError
from buildsys.store.record import FIELD_TYPES, StageRecord, record_problem
from buildsys.store.remote_url import RemoteLocation, open_location, redact

AC_VERSION = "1"  # bump when the record format changes: old records are then simply misses
CHUNK = 8 << 20  # streamed in pieces this size: a 1 GB model never sits in memory whole
SHOW_PROGRESS_FROM = 16 << 20  # transfers at least this large report bytes and rate
MAX_RECORD_BYTES = 4 << 20
METADATA_REQUESTS = 32  # HEADs and record GETs in flight at once
TRANSFERS = 4  # blob bodies in flight at once
_HEX64 = re.compile(r"[0-9a-f]{64}")
CREATED, SAME, DIFFERENT = "created", "same", "different"


class RemoteUnavailable(StoreError):
    """The remote failed and the build asked for it to be required."""


@dataclass
class TransferStats:
    requests: int = 0
    records_found: int = 0
    records_uploaded: int = 0
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    seconds_transferring: float = 0.0
    refused: list[str] = field(default_factory=list)  # untrusted or corrupt things ignored

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _short(exc: BaseException) -> str:
    """One line about a failed request: no response body (it may quote request headers)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"(status code: \d{3}[^:]*):.*", r"\1", text)
    return redact(text)[:300]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RemoteTier:
    def __init__(self, location: RemoteLocation, *, writable: bool = True,
                 required: bool = False) -> None:
        self.location = location
        self.name = location.name
        self.writable = writable
        self.required = required
        self.failure: str | None = None  # set once: the remote is not used after that
        self.stats = TransferStats()
        self.on_progress: Callable[[str], None] | None = None  # large transfers
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(METADATA_REQUESTS, thread_name_prefix="remote")
        self._transfer_slots = threading.BoundedSemaphore(TRANSFERS)
        self._bad_blobs: set[str] = set()  # corrupt on the remote: overwrite when we can

    @classmethod
    def open(cls, url: str, *, writable: bool = True, required: bool = False) -> RemoteTier:
        return cls(open_location(url), writable=writable, required=required)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, call: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`call` over items, concurrently (blob bodies still at most TRANSFERS at once)."""
        return list(self._pool.map(call, list(items)))

    @property
    def available(self) -> bool:
        return self.failure is None

    def report(self) -> dict[str, Any]:
        """What this remote did in this build, for the JSON report (no credentials)."""
        return {"url": self.name, "writable": self.writable, "failure": self.failure,
                **self.stats.as_dict()}

    def summary_line(self) -> str:
        if self.failure:
            return f"remote cache {self.name}: not used after a failure ({self.failure})"
        s = self.stats
        return (f"remote cache: {s.records_found} record(s) found, {s.blobs_downloaded} "
                f"blob(s) ({human_bytes(s.bytes_downloaded)}) downloaded, "
                f"{s.records_uploaded} record(s) and {s.blobs_uploaded} blob(s) "
                f"({human_bytes(s.bytes_uploaded)}) uploaded, {s.requests} request(s)")

    # --- failures ------------------------------------------------------------------------------
    def _fail(self, what: str, exc: BaseException) -> None:
        with self._lock:
            if self.failure is not None:
                return
            self.failure = f"{what}: {_short(exc)}"
        then = ("the build will fail (--remote-required)" if self.required
                else "building locally without it for the rest of this build")
        warnings.warn(f"remote cache {self.name} is unavailable ({self.failure}); {then}",
                      stacklevel=2)

    def _writes_refused(self, exc: BaseException) -> None:
        with self._lock:
            if not self.writable:
                return
            self.writable = False
        warnings.warn(f"remote cache {self.name} refused a write ({_short(exc)}); using it "
                      f"read-only for the rest of this build", stacklevel=2)

    def _write_failed(self, what: str, exc: BaseException) -> None:
        """A refused write makes the remote read-only; any other failure makes it unavailable."""
        if _is_permission(exc):
            self._writes_refused(exc)
        else:
            self._fail(what, exc)

    def _request(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one request; None for "not there" (and after the remote failed)."""
        if self.failure is not None:
            return None
        with self._lock:
            self.stats.requests += 1
        try:
            return call()
        except FileNotFoundError:
            return None
        except Exception as exc:
            self._fail(what, exc)
            return None

    def _refuse(self, text: str) -> None:
        with self._lock:
            self.stats.refused.append(text)
        warnings.warn(f"remote cache {self.name}: {text}", stacklevel=3)

    # --- blobs ---------------------------------------------------------------------------------
    @staticmethod
    def _blob_path(digest: str) -> str:
        if not _HEX64.fullmatch(digest):
            raise StoreError(f"not a blob digest: {digest!r}")
        return f"cas/{digest}"

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        import obstore

        meta = self._request("HEAD blob", lambda: obstore.head(self.location.metadata,
                                                                self._blob_path(digest)))
        return meta is not None and (size is None or meta["size"] == size)

    def has_blobs(self, sizes: dict[str, int]) -> set[str]:
        """The digests (of those given, with their expected sizes) present on the remote."""
        found = self._pool.map(lambda item: (item[0], self.has_blob(*item)), sizes.items())
        return {digest for digest, present in found if present}

    def get_blob(self, digest: str, size: int | None, dest: Path, label: str = "") -> bool:
        """Stream the blob to `dest`, hashing as it arrives; True only if every byte matches
        its digest (and size). Anything else leaves no file and returns False."""
        import obstore

        path = self._blob_path(digest)
        with self._transfer_slots:
            if self.failure is not None:
                return False
            started = time.monotonic()
            hasher, received = hashlib.sha256(), 0
            try:
                with self._lock:
                    self.stats.requests += 1
                result = obstore.get(self.location.transfers, path)
                stream = iter(result.stream(min_chunk_size=CHUNK))
                total = size if size is not None else int(result.meta["size"])
            except FileNotFoundError:
                return False
            except Exception as exc:
                self._fail("GET blob", exc)
                return False
            ticker = _Ticker(self.on_progress, f"downloading {label or digest[:12]}", total)
            try:
                with open(dest, "wb") as out:  # an OSError here is our disk's
                    while size is None or received <= size:  # longer than recorded: stop
                        try:
                            chunk = next(stream)
                        except StopIteration:
                            break
                        except Exception as exc:  # the connection, mid-body
                            self._fail("GET blob", exc)
                            dest.unlink(missing_ok=True)
                            return False
                        hasher.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
                        ticker.advance(received)
            except OSError as exc:
                dest.unlink(missing_ok=True)
                raise StoreError(f"cannot write {dest.name}: {exc.strerror or exc}") from exc
            ticker.done(received)
            if hasher.hexdigest() != digest or (size is not None and received != size):
                dest.unlink(missing_ok=True)
                with self._lock:
                    self._bad_blobs.add(digest)
                self._refuse(f"blob {digest[:12]} ({label or 'no name'}) is corrupt on the "
                             f"remote (its bytes do not match its digest); not used")
                return False
            with self._lock:
                self.stats.blobs_downloaded += 1
                self.stats.bytes_downloaded += received
                self.stats.seconds_transferring += time.monotonic() - started
            return True

    def put_blob(self, digest: str, source: Path, size: int, label: str = "") -> bool:
        """Upload unless already there (identical bytes by definition, unless we found it
        corrupt: then it is replaced). True when the remote holds the blob afterwards."""
        import obstore

        if not self.writable or self.failure is not None:
            return False
        with self._lock:
            known_bad = digest in self._bad_blobs
        if not known_bad and self.has_blob(digest, size):
            return True
        if self.failure is not None:
            return False
        with self._transfer_slots:
            started = time.monotonic()
            ticker = _Ticker(self.on_progress, f"uploading {label or digest[:12]}", size)
            try:
                with self._lock:
                    self.stats.requests += 1
                # Overwrite, not create: a blob's name is its content, so a concurrent writer
                # can only write the same bytes (and create-only would hold it in memory).
                with open(source, "rb") as data:
                    if size < SHOW_PROGRESS_FROM:  # one request
                        obstore.put(self.location.transfers, self._blob_path(digest),
                                    data.read(), use_multipart=False)
                    else:  # multipart, CHUNK at a time, progress as parts go out
                        obstore.put(self.location.transfers, self._blob_path(digest),
                                    _reading(data, ticker), chunk_size=CHUNK,
                                    max_concurrency=2)
                ticker.done(size)
            except Exception as exc:  # (our own blob was checked just before: the remote's)
                self._write_failed("PUT blob", exc)
                return False
            with self._lock:
                self.stats.blobs_uploaded += 1
                self.stats.bytes_uploaded += size
                self.stats.seconds_transferring += time.monotonic() - started
                self._bad_blobs.discard(digest)
            return True

    # --- records -------------------------------------------------------------------------------
    @staticmethod
    def _record_path(stage_key: str) -> str:
        if not _HEX64.fullmatch(stage_key):
            raise StoreError(f"not a stage key: {stage_key!r}")
        return f"ac/{AC_VERSION}/{stage_key}"

    def get_record(self, stage_key: str) -> StageRecord | None:
        import obstore

        def fetch() -> bytes | None:
            result = obstore.get(self.location.metadata, self._record_path(stage_key))
            if int(result.meta["size"]) > MAX_RECORD_BYTES:
                self._refuse(f"record {stage_key[:12]} is {result.meta['size']} bytes; "
                             f"refused")
                return None
            return bytes(result.bytes())

        raw = self._request("GET record", fetch)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            record = None
        problem = record_problem(record, stage_key)
        if problem:
            self._refuse(f"record {stage_key[:12]} refused: {problem}")
            return None
        with self._lock:
            self.stats.records_found += 1
        return record

    def get_records(self, keys: Iterable[str]) -> dict[str, StageRecord]:
        """Records found, by key: looked up concurrently."""
        found = self._pool.map(lambda k: (k, self.get_record(k)), list(keys))
        return {key: record for key, record in found if record is not None}

    def put_record(self, stage_key: str, record: StageRecord,
                   ignore: Iterable[str] = ()) -> str | None:
        """Create-only. CREATED; SAME when a record with the same output digests was there
        (outputs named in `ignore`, measurements, may differ); DIFFERENT names the outputs
        whose digests differ (the stage is not deterministic); None if not written."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        if not self.writable or self.failure is not None:
            return None
        body = json.dumps({k: v for k, v in record.items() if k in FIELD_TYPES},
                          sort_keys=True).encode()
        with self._lock:
            self.stats.requests += 1
        try:
            obstore.put(self.location.metadata, self._record_path(stage_key), body,
                        mode="create")
        except AlreadyExistsError:
            there = self.get_record(stage_key)
            if there is None:
                return None
            skip = set(ignore)
            ours, theirs = record["outputs"], there["outputs"]
            differing = sorted(n for n in set(ours) | set(theirs) if n not in skip and
                               (ours.get(n) or {}).get("digest")
                               != (theirs.get(n) or {}).get("digest"))
            return f"{DIFFERENT}: {', '.join(differing)}" if differing else SAME
        except Exception as exc:
            self._write_failed("PUT record", exc)
            return None
        with self._lock:
            self.stats.records_uploaded += 1
        return CREATED


def _is_permission(exc: BaseException) -> bool:
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    return isinstance(exc, PermissionError | PermissionDeniedError | UnauthenticatedError)


class _Ticker:
    """Bytes and rate of one large transfer, at most once a second."""

    def __init__(self, report: Callable[[str], None] | None, what: str, total: int) -> None:
        self.report = report if total >= SHOW_PROGRESS_FROM else None
        self.what = what
        self.total = total
        self.started = self.last = time.monotonic()

    def advance(self, done: int) -> None:
        now = time.monotonic()
        if self.report is not None and now - self.last >= 1.0:
            self.last = now
            rate = done / max(now - self.started, 1e-6)
            self.report(f"{self.what}: {human_bytes(done)} of {human_bytes(self.total)} "
                        f"at {human_bytes(rate)}/s")

    def done(self, total: int) -> None:
        if self.report is not None:
            seconds = max(time.monotonic() - self.started, 1e-6)
            self.report(f"{self.what}: {human_bytes(total)} in {seconds:.1f} s "
                        f"({human_bytes(total / seconds)}/s)")


def _reading(data: Any, ticker: _Ticker) -> Iterable[bytes]:
    """The file in CHUNK pieces, reporting progress as they go out."""
    sent = 0
    while chunk := data.read(CHUNK):
        sent += len(chunk)
        ticker.advance(sent)
        yield chunk


def remote_from_env(url: str | None) -> str | None:
    """The remote to use: --remote, else $MODELBUILD_REMOTE; None for no remote."""
    chosen = url if url is not None else os.environ.get("MODELBUILD_REMOTE")
    return (chosen or "").strip() or None
