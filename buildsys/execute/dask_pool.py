"""The second worker pool: stages on a Dask cluster (`--scheduler tcp://host:8786`, or
`--workers N` for a LocalCluster inside this process).

Bytes travel through the shared remote cache, never through the scheduler: before a stage is
submitted its inputs are on the remote (uploaded from here if only this machine has them);
the task is the stage as plain data; the worker (`dask_worker.py`) fetches the inputs by
digest, runs the stage, uploads outputs and record; back here the outputs are downloaded into
this machine's store and build directory. The workers of `--workers N` are threads of this
process: a stage never runs in a Dask worker, only in a process of its own that the worker
waits for, so worker processes would only add interpreters, nannies and a copy of the warm
zygotes each. They share this machine's store and zygotes (nothing is copied between stores;
a remote, if given, is pushed to as by a local build). One task per stage, each with its own
resource restrictions (resources given to a whole graph can be lost: dask/distributed#3445).

Faults: a worker that dies mid-stage has its task run elsewhere by the scheduler, at most
`distributed.scheduler.allowed-failures` times (then the stage fails, naming that limit);
a task that raised (the remote failed on a worker) is retried `RETRIES` times. A lost
scheduler fails the build with its address; what finished is stored and the re-run resumes.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any

from buildsys.errors import ModelbuildError, StoreError, UsageError
from buildsys.execute.dask_worker import (
    kill_stages,
    run_stage,
    serve_in_process,
    stop_serving_in_process,
    warm_up,
    worker_label,
)
from buildsys.execute.pool import StageJob, StageResult
from buildsys.store.record import StageRecord
from buildsys.store.store import Store
from buildsys.toolchain import is_installed

SCHEDULER_ENV = "MODELBUILD_SCHEDULER"
WORKERS_TIMEOUT_S = 60  # for a first worker to join (a batch queue may take a while)
RETRIES = 2  # for tasks that raised; a dead worker is the scheduler's allowed-failures
KILL_TIMEOUT_S = 10
WAIT_STEP_S = 0.5
LOST_AFTER_S = 10
NOTES_EVERY_S = 1.0
# Dask settings for the workers of `--workers N`, which live in this process: their sampling
# profiler would sample this process's every thread 100 times a second, its event loop ticks
# every 20 ms, and the memory monitor would spill or pause on this process's memory (the
# stages' memory is their own processes'). With Dask's defaults the coordinator spent about
# 1.5 s more CPU on the tiny recipe's 34 stages than a local build.
IN_PROCESS_WORKERS_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
}


class SchedulerLost(ModelbuildError):
    """The coordinator lost its connection to the Dask scheduler."""


class DaskPool:
    name = "dask"
    reads_local_store = False  # stages read blobs from the shared remote cache

    def __init__(self, client: Any, address: str, store: Store, remote_url: str | None,
                 cluster: Any = None) -> None:
        self.client = client
        self.address = address
        self.store = store
        self.remote_url = remote_url
        self.cluster = cluster  # a LocalCluster this pool started (and stops)
        # A LocalCluster's workers use this machine's store: their stages read its blobs.
        self.reads_local_store = cluster is not None
        self._lock = threading.Lock()
        self._futures: dict[str, Any] = {}  # task key → future
        self._stage_of: dict[str, str] = {}  # task key → stage id
        self._notes: dict[str, str] = {}
        self._notes_at = 0.0
        self._capacity = 1
        self._cancelled = False

    # --- getting a cluster --------------------------------------------------------------------
    @classmethod
    def connect(cls, address: str, store: Store, remote_url: str) -> DaskPool:
        Client = _client_class("--scheduler")
        try:
            # timeout: dask's distributed.comm.timeouts.connect (DASK_DISTRIBUTED__COMM__…)
            client = Client(address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ModelbuildError(f"cannot reach the Dask scheduler at {address}: "
                                  f"{_short(exc)}") from None
        pool = cls(client, address, store, remote_url)
        pool._wait_for_workers()
        return pool

    @classmethod
    def start_local(cls, workers: int, store: Store, remote_url: str | None) -> DaskPool:
        """A LocalCluster of `workers` single-threaded workers in this process, sharing this
        machine's store (`remote_url`: a remote they push to as well, or None)."""
        Client = _client_class("--workers")
        import dask
        from distributed import LocalCluster

        # The workers are this machine: the simulator if its toolchain is installed, and AI
        # Hub as far as this machine reaches it (the planner skips AI Hub stages otherwise).
        resources = {"aihub": 1, **({"htp_sim": 1} if is_installed("onnxruntime-qnn") else {})}
        # The workers share this machine's CPUs as -j shares them among local stages, and
        # its store.
        serve_in_process(store.root, workers)
        with dask.config.set(IN_PROCESS_WORKERS_CONFIG):  # (read when the servers start)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=False,
                                   dashboard_address=None, resources=resources)
        client = Client(cluster, set_as_default=False)
        pool = cls(client, str(cluster.scheduler_address), store, remote_url, cluster)
        pool._wait_for_workers()
        return pool

    def _wait_for_workers(self) -> None:
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            self.close()
            raise ModelbuildError(f"no worker joined the Dask scheduler at {self.address} "
                                  f"within {WORKERS_TIMEOUT_S} s ({_short(exc)})") from None
        self._capacity = max(1, sum(w.get("nthreads", 1) for w in self._workers().values()))

    def _workers(self) -> dict[str, dict[str, Any]]:
        return dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def warm_up(self, planned: list[tuple[str, dict[str, Any]]]) -> None:
        """Have every worker start the warm zygotes the stages planned to run will want."""
        from buildsys.stages import stage_class

        specs = set()
        for kind, params in planned:
            with contextlib.suppress(Exception):
                cls = stage_class(kind)
                if not cls.remote:
                    specs.add(tuple(sorted(cls.requirements(params))))
        if specs:
            with contextlib.suppress(Exception):
                # (quick: each worker only starts processes; their imports run on their own)
                self.client.run(warm_up, [list(r) for r in sorted(specs)])

    # --- the pool interface -------------------------------------------------------------------
    def capacity(self) -> int:
        return self._capacity

    def provide(self, digest: str, label: str) -> bool:
        """On the remote cache, uploaded from here when only this machine has it (in this
        machine's store, for the workers of a LocalCluster)."""
        if self.reads_local_store:
            return self.store.fetch_blob(digest, label=label)
        remote = self.store.remote
        if remote is None or not remote.available:
            return False
        if remote.has_blob(digest):
            return True
        if not self.store.blob_ok(digest):
            return False
        path = self.store.blobs.path_of(digest)
        return remote.put_blob(digest, path, path.stat().st_size, label)

    def run(self, job: StageJob, slot: int | None) -> StageResult:
        from distributed import KilledWorker

        key = f"{job.stage_id}#{job.key[:12]}#{uuid.uuid4().hex[:6]}"
        resources = {k: v for k, v in job.resources.items() if k != "memory"}
        workers = self._workers_with_memory(job.resources.get("memory"))
        if workers == []:  # Dask cannot wait for memory: no worker has that much now
            return StageResult(False, error=f"{job.stage_id}: needs "
                               f"{job.resources['memory'] / 1e9:.1f} GB of memory; no worker "
                               f"of the Dask cluster at {self.address} has that much",
                               ran=False)
        waiting = unplaceable_reason(job.resources, self._workers()) if resources else ""
        with self._lock:
            self._stage_of[key] = job.stage_id
            if waiting:
                self._notes[job.stage_id] = f"waiting for a worker: {waiting}"
        try:
            future = self.client.submit(run_stage, job.to_dict(), self.remote_url, key,
                                        key=key, resources=resources or None,
                                        workers=workers, retries=RETRIES, pure=False)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            with self._lock:
                self._futures[key] = future
            # In steps: Ctrl-C must not wait on a scheduler that is gone. (Not by result's
            # timeout: each one that expires leaves an asyncio TimeoutError that Python
            # prints as "Future exception was never retrieved".)
            while not done.wait(WAIT_STEP_S):
                if self._cancelled:
                    raise CancelledError
            return StageResult.from_dict(future.result())
        except KilledWorker as exc:
            return StageResult(False, error=f"{job.stage_id}: every worker that ran it died "
                               f"({_short(exc)}); not retried again (the scheduler's "
                               f"distributed.scheduler.allowed-failures)", ran=False)
        except (CancelledError, Exception) as exc:
            # After Ctrl-C nothing is asked of the scheduler again: the build is ending. (A
            # lost scheduler cancels futures too: that is told apart next.)
            if not self._cancelled and self._lost():
                raise SchedulerLost(self._lost_message()) from None
            if self._cancelled or isinstance(exc, CancelledError):
                return StageResult(False, error=f"{job.stage_id}: cancelled on the cluster",
                                   ran=False)
            return StageResult(False, error=f"{job.stage_id}: failed on the cluster: "
                               f"{type(exc).__name__}: {_short(exc)}", ran=False)
        finally:
            with self._lock:
                self._futures.pop(key, None)
                self._stage_of.pop(key, None)
                self._notes.pop(job.stage_id, None)

    def keep(self, record: StageRecord, measurements: tuple[str, ...],
             needed_here: bool) -> bool:
        # The worker uploaded blobs and record. Intermediates stay there, like remote hits
        # (remembered, so the next build asks nothing); release archives and leaves come
        # here, blobs first and the record last.
        if self.reads_local_store:  # the worker stored both here already
            return True
        if not needed_here:
            self.store.machine.remember_remote(record["key"], record)
            return False
        if not self.store.fetch(record):
            name = self.store.remote.name if self.store.remote else "-"
            raise StoreError(f"{record['stage_id']}: built on the cluster, but its outputs "
                             f"could not be downloaded from the remote cache {name}")
        return True

    def notes(self) -> dict[str, str]:
        """Running stage → "on <worker>" (asked of the scheduler at most once a second)."""
        now = time.monotonic()
        if now - self._notes_at >= NOTES_EVERY_S and self._futures:
            self._notes_at = now
            with contextlib.suppress(Exception):
                info = self._workers()
                for address, keys in self.client.processing().items():
                    label = worker_label(info.get(address, {}).get("name"), address)
                    for key in keys:
                        stage_id = self._stage_of.get(str(key))
                        if stage_id is not None:
                            self._notes[stage_id] = f"on {label}"
        with self._lock:
            return dict(self._notes)

    def cancel_all(self) -> None:
        """Ctrl-C: cancel this build's tasks and end the stage processes they started."""
        self._cancelled = True
        with self._lock:
            futures, keys = list(self._futures.values()), list(self._futures)
        if not futures:
            return

        def cancel() -> None:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)
            with contextlib.suppress(Exception):
                self.client.run(kill_stages, keys, on_error="ignore")

        thread = threading.Thread(target=cancel, daemon=True)
        thread.start()
        thread.join(KILL_TIMEOUT_S)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=KILL_TIMEOUT_S)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=KILL_TIMEOUT_S)
            stop_serving_in_process()

    # --- placement ----------------------------------------------------------------------------
    def _workers_with_memory(self, needed: float | None) -> list[str] | None:
        if not needed:
            return None
        return [a for a, w in self._workers().items()
                if (w.get("memory_limit") or 0) >= needed]

    def unplaceable(self, needs: dict[str, dict[str, float]]) -> dict[str, str]:
        """Stage id → why no worker of the cluster could run it (for --plan)."""
        workers = self._workers()
        out = {}
        for stage_id, resources in needs.items():
            reason = unplaceable_reason(resources, workers)
            if reason:
                out[stage_id] = reason
        return out

    def _lost(self) -> bool:
        if self.client.status not in ("running", "connecting"):
            return True
        try:  # (bounded: a scheduler that no longer answers is as good as lost)
            self.client.sync(self.client.scheduler.identity, callback_timeout=LOST_AFTER_S)
        except Exception:
            return True
        return False

    def _lost_message(self) -> str:
        return (f"lost the Dask scheduler at {self.address}: finished stages are cached; "
                f"run again (with a scheduler) to resume")


def unplaceable_reason(needs: dict[str, float], workers: dict[str, dict[str, Any]]) -> str:
    """Why none of these workers can run a stage with these needs, or ''."""
    if not needs:
        return ""
    for worker in workers.values():
        offered = worker.get("resources") or {}
        memory = worker.get("memory_limit") or 0
        if all((memory if name == "memory" else offered.get(name, 0)) >= amount
               for name, amount in needs.items()):
            return ""
    wanted = ", ".join(f"{name}={amount:g}" for name, amount in sorted(needs.items()))
    offered_all = sorted({f"{n}={v:g}" for w in workers.values()
                          for n, v in (w.get("resources") or {}).items()})
    return (f"needs {wanted}; no worker offers that (workers offer: "
            f"{', '.join(offered_all) or 'no resources'})")


def _client_class(flag: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(f"{flag} needs Dask: pip install 'modelbuild[dask]'") from None
    return Client


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
