"""What a Dask worker runs for modelbuild: one stage, given as plain data, on its own store.

The worker keeps a store of its own (`$MODELBUILD_WORKER_CACHE_DIR`, else inside the Dask
worker's local directory; the in-process workers of `--workers N` share the coordinator's)
with the build's shared remote cache behind it. It fetches the
stage's inputs from there by digest, runs the stage through the local process pool (its own
child process, as on a laptop: a segfault fails only that stage), uploads the outputs and
then the record, and returns the result. A worker killed at any point has uploaded no
record, so the stage is never recorded half-done; the scheduler runs it elsewhere.

Imported by the workers by module path; the coordinator imports it only to name `run_stage`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.execute.local_pool import LocalPoolOptions, LocalProcessPool
from buildsys.execute.pool import StageJob, make_record
from buildsys.execute.zygote import ZygotePool

WORKER_CACHE_ENV = "MODELBUILD_WORKER_CACHE_DIR"
# The CPUs one worker process's stages may use (default: the machine's, shared by its
# threads); set when several worker processes share a machine.
WORKER_CPUS_ENV = "MODELBUILD_WORKER_CPUS"

# Stages running in this worker process (task key → the pool running it): Ctrl-C on the
# coordinator ends their child processes through `kill_stages`.
_running: dict[str, LocalProcessPool] = {}
_running_lock = threading.Lock()
# Warm workers (zygote.py) for the worker process's lifetime: a cluster worker runs many
# stages of many builds, and each would otherwise pay `import torch` again. They end with it.
# Workers in one process (`--workers N`) share them, as the slots of a local build do.
_zygotes: ZygotePool | None = None


@dataclass(frozen=True)
class InProcessWorkers:
    """The workers of `--workers N`, inside the coordinator's process: in place of the
    environment a worker process reads, the coordinator's store, and how many share the
    machine's CPUs (as the N slots of `-j N` do)."""
    store_root: Path
    count: int


_in_process: InProcessWorkers | None = None


class RemoteFailed(RuntimeError):
    """The shared cache failed on this worker: worth a retry (Dask retries raised tasks)."""


def worker_label(name: object, address: str) -> str:
    """How progress and the report name a worker: its --name when it has one, else its
    address (LocalCluster and an unnamed `dask worker` number or leave them unnamed); the
    numbered workers in this process of `--workers N` are worker-0, worker-1, …"""
    if isinstance(name, str) and name and not name.isdigit() and name != address:
        return name
    return f"worker-{name}" if address.startswith("inproc://") else address


def serve_in_process(store_root: Path, workers: int) -> None:
    """This process hosts `workers` workers (a LocalCluster of `--workers N`, numbered from
    0): they use this store and share out this machine's CPUs as `-j N` does."""
    global _in_process
    _in_process = InProcessWorkers(store_root, workers)


def stop_serving_in_process() -> None:
    """The LocalCluster has ended: its zygotes too."""
    global _zygotes, _in_process
    with _running_lock:
        zygotes, _zygotes = _zygotes, None
        _in_process = None
    if zygotes is not None:
        zygotes.close()


def _as_a_local_build() -> None:
    """Stage processes started from this worker run as a local build's do. Dask's nanny sets
    MALLOC_TRIM_THRESHOLD_=65536 in its workers' environment (distributed.nanny.
    pre-spawn-environ) to hand memory back sooner. Inherited by a stage, it makes glibc trim
    its heap on every large free: a local tiny build with it set spent 10 % more stage time
    (AIMET's quantization 13.3 → 14.9 s)."""
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def run_stage(job_data: dict[str, Any], remote_url: str | None,
              task_key: str) -> dict[str, Any]:
    from distributed import get_worker

    from buildsys.store.remote import RemoteTier
    from buildsys.store.store import Store

    _as_a_local_build()
    worker = get_worker()
    label = worker_label(worker.name, worker.address)
    job = StageJob.from_dict(job_data)
    hosted = _in_process
    if hosted is not None:  # (the coordinator swept the store's leftovers at its start)
        store = Store(hosted.store_root)
    else:
        store = Store(Path(os.environ.get(WORKER_CACHE_ENV)
                           or Path(worker.local_directory) / "modelbuild"))
        store.sweep_tmp()  # scratch directories of stage processes whose worker was killed
    # A fresh remote per stage: one that failed once is not used again by the same tier,
    # and a worker lives for many builds. (None: a LocalCluster's worker, sharing the
    # coordinator's store, with no remote to push to.)
    remote = RemoteTier.open(remote_url, writable=True) if remote_url else None
    if remote is not None:
        store.attach_remote(remote)
    jobs, slot = _slot(worker.name, worker.state.nthreads, job.remote)
    global _zygotes
    with _running_lock:
        if _zygotes is None:
            _zygotes = ZygotePool()
        pool = LocalProcessPool(store, LocalPoolOptions(
            jobs=jobs, cpu_count=worker_cpus(), zygotes=_zygotes))
        _running[task_key] = pool
    try:
        result = pool.run(job, slot)
        result.worker = label
        if not result.ok:
            result.error = f"{result.error} (on worker {label})"
        if result.ok:
            record = make_record(job, result)
            store.put_record(job.key, record)
            store.push(job.key, record)  # blobs first, then the record (create-only)
            store.finish_uploads()
            if remote is not None and remote.failure is not None:
                raise RemoteFailed(f"worker {label}: the remote cache {remote.name} failed "
                                   f"({remote.failure}); outputs of {job.stage_id} not shared")
        elif not result.ran and remote is not None and remote.failure is not None:
            raise RemoteFailed(f"worker {label}: the remote cache {remote.name} failed "
                               f"({remote.failure}) while fetching inputs of {job.stage_id}")
        return result.to_dict()
    finally:
        with _running_lock:
            _running.pop(task_key, None)
        pool.close()
        store.close()


def _slot(name: object, nthreads: int, remote: bool) -> tuple[int, int | None]:
    """(the stages sharing the CPUs, this stage's slot among them) as the local pool takes
    them. A remote stage waits rather than computes: no slot. A worker in this process is
    slot `name` of `--workers N`, pinned to its share of the CPUs as `-j N` pins a local
    stage, so that a build's stages run where they would locally. A single-threaded worker
    process gives its stage its CPUs (up to what the stage can use)."""
    if remote:
        return nthreads, None
    if _in_process is not None and isinstance(name, int):
        return _in_process.count, name
    return nthreads, 0 if nthreads == 1 else None


def warm_up(requirements: list[list[str]]) -> int:
    """Start, in the background, the zygotes a build's stages will want on this worker (one
    per preload set their requirements call for): their imports overlap the first stages
    instead of each first stage of a kind waiting for them."""
    from buildsys.execute import zygote

    global _zygotes
    _as_a_local_build()
    # A worker process with one CPU to itself: importing every preload set at once competes
    # with the stage that runs meanwhile (measured on a 2-core machine with 2 worker
    # processes): start them on demand. Workers in one process share them, as a local build.
    if not zygote.enabled() or (worker_cpus() < 2 and _in_process is None):
        return 0
    wanted = {zygote.preload_for(needed) for needed in requirements}
    with _running_lock:
        if _zygotes is None:
            _zygotes = ZygotePool()
        for modules in sorted(wanted):
            _zygotes.zygote(modules)
    return len(wanted)


def worker_cpus() -> int:
    """The CPUs this worker's stages share: the machine's for workers in this process (their
    slots share them out), else what $MODELBUILD_WORKER_CPUS gives a worker process."""
    chosen = os.environ.get(WORKER_CPUS_ENV, "")
    if _in_process is None and chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)


def kill_stages(task_keys: list[str]) -> int:
    """End the child processes of these tasks on this worker (Dask cannot stop a running
    task's thread; ending its child makes the task return at once)."""
    with _running_lock:
        pools = [_running[k] for k in task_keys if k in _running]
    for pool in pools:
        pool.cancel_all()
    return len(pools)
