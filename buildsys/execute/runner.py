"""Run a plan: dependency order, N stages at once, each handed to a worker pool.

The scheduler lives in the main thread; one thread per running stage waits on the pool (the
local process pool by default, `local_pool.py`; a Dask cluster, `dask_pool.py`), which knows
nothing of the plan. A stage is keyed again when it becomes ready — its inputs' real digests
are known by then — so a re-run upstream stage that produced identical bytes leaves it cached
(early cutoff).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from buildsys.errors import Interrupted, ModelbuildError, StoreError
from buildsys.execute.local_pool import LocalPoolOptions, LocalProcessPool
from buildsys.execute.pool import StageJob, WorkerPool, make_record
from buildsys.plan.keys import ingredients, stage_key
from buildsys.plan.node import FileRef, OutputRef, StageNode
from buildsys.plan.planner import (
    CACHED,
    REMOTE,
    RUN,
    SKIPPED,
    Plan,
    remote_hit,
    resolve_input_digests,
    upstream_keys,
)
from buildsys.plan.status import Status
from buildsys.stages import stage_class
from buildsys.store.record import StageRecord
from buildsys.store.store import Store

BUILT, FAILED = Status.BUILT, Status.FAILED
# Remote stages (AI Hub jobs) waiting at once, besides the -j local ones: each is an idle
# worker process polling a service, and the service runs the jobs in parallel on its devices.
REMOTE_JOBS = 16


@dataclass
class Outcome:
    stage_id: str
    status: Status  # built | cached | failed | skipped
    reason: str
    key: str | None = None
    record: StageRecord | None = None
    duration_s: float = 0.0
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    check_failed: bool = False
    planned_skip: bool = False  # skipped on purpose at plan time (AI Hub off): not a failure
    # Where the stage sits on the build's timeline: seconds after execution started, and
    # which worker slot ran it (None when it ran nowhere: cached, skipped).
    started_s: float | None = None
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (BUILT, CACHED) or self.planned_skip


@dataclass
class Requeue:
    """Not yet: these upstream stages must run first (their outputs are nowhere to be had)."""

    upstream: list[str]


class Progress(Protocol):
    def started(self, stage_id: str, reason: str) -> None: ...
    def note(self, stage_id: str, text: str) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


@dataclass
class ExecuteOptions:
    build_dir: Path
    project_dir: Path
    release_dir: Path | None = None  # where stages with `publish` set also place their outputs
    jobs: int = 1
    keep_going: bool = False
    # Run stages in this process (one at a time) instead of worker processes: for tests that
    # patch the network edge (AI Hub). No crash isolation; never the CLI's choice.
    inline: bool = False
    # A command each worker starts under (`--run-under`): an emulator, nice, taskset.
    run_under: list[str] = field(default_factory=list)
    cpu_count: int = field(default_factory=lambda: len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Executor:
    def __init__(self, plan: Plan, store: Store, options: ExecuteOptions,
                 progress: Progress, pool: WorkerPool | None = None) -> None:
        self.plan = plan
        self.store = store
        self.options = options
        self.progress = progress
        self._owns_pool = pool is None
        self.pool: WorkerPool = pool or LocalProcessPool(store, LocalPoolOptions(
            jobs=options.jobs, inline=options.inline, run_under=options.run_under,
            cpu_count=options.cpu_count,
            warm=[(p.node.kind, p.node.params) for p in plan.stages.values()
                  if p.status == RUN]))
        self.outcomes: dict[str, Outcome] = {}
        self._lock = threading.Lock()
        self._free_slots = list(range(self.pool.capacity()))
        self._stopping = False
        self._statuses: dict[str, str] = {}  # running stage → the status line last shown
        # Stage keys whose remote result turned out unusable in this build: not asked again.
        self._distrusted: set[str] = set()
        self._requeued: set[str] = set()  # stages settled, then run after all: once at most
        self._workers: dict[str, str] = {}  # running stage → the worker slot it runs in
        self._t0 = time.monotonic()
        # Remote stages wait on a service outside the -j budget. Inline stages share this
        # process (and its working directory), so there they run one at a time like the rest.
        self._remote = set() if options.inline or self.pool.name != "local" else {
            s for s in plan.order if stage_class(plan.stages[s].node.kind).remote}

    # --- scheduling -------------------------------------------------------------------------
    def run(self) -> dict[str, Outcome]:
        try:
            return self._run()
        finally:
            if self._owns_pool:  # a pool given to us is closed by whoever opened it
                self.pool.close()

    def _run(self) -> dict[str, Outcome]:
        graph = self.plan.graph
        waiting = {s: set(graph.predecessors(s)) for s in self.plan.order}
        ready = [s for s in self.plan.order if not waiting[s]]
        running: dict[Future[Outcome], str] = {}
        jobs = self.pool.capacity()
        self._t0 = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=jobs + REMOTE_JOBS, thread_name_prefix="stage")
        try:
            while ready or running:
                while not self._stopping:
                    stage_id = self._next_startable(ready, running.values(), jobs)
                    if stage_id is None:
                        break
                    outcome = self._settle_without_running(stage_id)
                    if isinstance(outcome, Requeue):
                        self._requeue(stage_id, outcome.upstream, waiting, ready)
                        continue
                    if outcome is None:
                        slot = None if stage_id in self._remote else self._free_slots.pop(0)
                        self.progress.started(stage_id, self.plan.stages[stage_id].reason)
                        self._workers[stage_id] = (self.pool.name if self.pool.name != "local"
                                                   else LocalProcessPool.worker_name(slot))
                        running[pool.submit(self._run_stage, stage_id, slot)] = stage_id
                        continue
                    self._finish(outcome, waiting, ready)
                if self._stopping and not running:
                    break
                if not running:
                    continue
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    stage_id = running.pop(future)
                    self._finish(future.result(), waiting, ready)
                self._show_statuses(running.values())
        except KeyboardInterrupt:
            self._stopping = True
            self.pool.cancel_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise Interrupted("interrupted: finished stages are cached; run again to resume") \
                from None
        pool.shutdown(wait=True)
        for stage_id in self.plan.order:  # stages never reached after a failure stopped us
            if stage_id not in self.outcomes:
                outcome = Outcome(stage_id, SKIPPED, "not started: the build stopped after a "
                                  "failure (use --keep-going to build independent stages)")
                self.outcomes[stage_id] = outcome
                self.progress.finished(outcome)
        return self.outcomes

    def _next_startable(self, ready: list[str], running: Iterable[str], jobs: int) -> str | None:
        """The first ready stage with a free slot of its kind: local stages share the -j
        budget, remote ones their own."""
        busy = list(running)
        remote = sum(1 for s in busy if s in self._remote)
        free_local, free_remote = jobs - (len(busy) - remote), REMOTE_JOBS - remote
        if not self._remote:  # the common case, kept O(1) for plans of 10,000 stages
            return ready.pop(0) if ready and free_local > 0 else None
        for index, stage_id in enumerate(ready):
            if (free_remote if stage_id in self._remote else free_local) > 0:
                return ready.pop(index)
        return None

    def _show_statuses(self, running: Iterable[str]) -> None:
        """Pass on each running stage's newest status line (a remote job's state and link,
        the cluster worker it runs on)."""
        notes = self.pool.notes()
        for stage_id in list(running):
            text = notes.get(stage_id, "")
            if text and text != self._statuses.get(stage_id):
                self._statuses[stage_id] = text
                self.progress.note(stage_id, text)

    def _finish(self, outcome: Outcome, waiting: dict[str, set[str]], ready: list[str]) -> None:
        outcome.started_s = round(time.monotonic() - self._t0 - outcome.duration_s, 3)
        started_on = self._workers.pop(outcome.stage_id, None)
        outcome.worker = outcome.worker or started_on
        self.outcomes[outcome.stage_id] = outcome
        if outcome.status == FAILED and not self.options.keep_going:
            self._stopping = True
        self.progress.finished(outcome)
        for child in sorted(self.plan.graph.successors(outcome.stage_id)):
            waiting[child].discard(outcome.stage_id)
            # (a requeued stage's children may be settled already)
            if not waiting[child] and child not in self.outcomes and child not in ready:
                ready.append(child)

    def _settle_without_running(self, stage_id: str) -> Outcome | Requeue | None:
        """Skipped, cached (as planned, by early cutoff, or from the remote cache), failed at
        plan time (e.g. no AI Hub token: it never runs), None when it has to run, or Requeue
        when it has to run but inputs of its are nowhere to be had (then those run first)."""
        planned = self.plan.stages[stage_id]
        if planned.status == FAILED:  # the planner's FAILED: failed at plan time
            return Outcome(stage_id, FAILED, "cannot run", error=planned.reason)
        failed_up = [u for u in self.plan.graph.predecessors(stage_id)
                     if not self.outcomes[u].ok]
        if planned.status == SKIPPED:
            return Outcome(stage_id, SKIPPED, planned.reason, planned_skip=True)
        if failed_up:
            return Outcome(stage_id, SKIPPED,
                           f"upstream {failed_up[0]} {self.outcomes[failed_up[0]].status}")
        if planned.status == CACHED:
            return self._cached(stage_id, planned.key, planned.record, "up to date")
        rebuilt_up = any(self.outcomes[u].status == BUILT
                         for u in self.plan.graph.predecessors(stage_id))
        if planned.status == REMOTE and not rebuilt_up:
            settled = self._remote_hit(stage_id)
            return settled if settled is not None else self._inputs_or_requeue(stage_id)
        # Keyed (again) from what its inputs are now: an upstream stage ran in this build.
        node = planned.node
        records = {u: self.outcomes[u].record for u in self.plan.graph.predecessors(stage_id)}
        digests = resolve_input_digests(node, self.store, records)  # type: ignore[arg-type]
        assert digests is not None, f"{stage_id}: upstream finished without outputs"
        planned.ingredients = ingredients(node, digests, upstream_keys(node, records))
        planned.key = stage_key(planned.ingredients)
        if planned.forced:
            return self._inputs_or_requeue(stage_id)
        record = self.store.get_record(planned.key)
        if record is not None and not self.store.damaged_outputs(record):
            return self._cached(stage_id, planned.key, record,
                                "early cutoff: inputs unchanged after upstream re-ran")
        if planned.key not in self._distrusted:  # another machine may have built it
            found = self.store.find_remote_records([planned.key])
            if remote_hit(node, planned.key, found):
                planned.status, planned.record = REMOTE, found[planned.key]
                settled = self._remote_hit(stage_id, "remote hit (keyed after upstream re-ran)")
                if settled is not None:
                    return settled
        return self._inputs_or_requeue(stage_id)

    def _inputs_or_requeue(self, stage_id: str) -> Requeue | None:
        """Before a stage runs: its inputs from upstream stages, downloaded if they stayed on
        the remote. Upstream stages whose outputs cannot be had (gone or corrupt there, or no
        remote in use) must run first: Requeue names them."""
        planned = self.plan.stages[stage_id]
        parts = planned.ingredients or {}
        lacking = sorted({ref.stage for name, ref in planned.node.inputs.items()
                          if isinstance(ref, OutputRef)
                          and not self.pool.provide(parts["inputs"][name], ref.name)})
        if not lacking or self._requeued & set(lacking):
            return None  # (rebuilt once already and gone again: the stage fails, saying so)
        self._requeued.update(lacking)
        return Requeue(lacking)

    def _requeue(self, stage_id: str, upstream: list[str], waiting: dict[str, set[str]],
                 ready: list[str]) -> None:
        """Settled upstream stages whose outputs stayed on the remote and cannot be had after
        all: run them now (their results from the remote are not trusted again in this
        build, nor remembered), then this stage."""
        for up in upstream:
            old = self.outcomes.pop(up)
            planned = self.plan.stages[up]
            if old.key:
                self._distrusted.add(old.key)
                self.store.machine.forget_remote(old.key)
            planned.status, planned.record = RUN, None
            planned.reason = f"its outputs are needed by {stage_id} and could not be had " \
                             f"from the remote cache"
            waiting[up] = set()  # its own upstream stages are settled
            ready.insert(0, up)
            if hasattr(self.progress, "total"):  # it is settled a second time
                self.progress.total += 1
        waiting[stage_id] = set(upstream)

    def _remote_hit(self, stage_id: str, reason: str = "remote hit") -> Outcome | None:
        """A stage the remote cache answered. Its blobs are downloaded only when something
        here needs them — a stage that runs, or a final artifact (published, or a leaf of the
        graph); otherwise only its record is used (it gives downstream stages their keys).
        None when its blobs cannot be had after all: then it runs."""
        planned = self.plan.stages[stage_id]
        assert planned.key is not None and planned.record is not None
        successors = list(self.plan.graph.successors(stage_id))
        outputs = planned.record["outputs"].values()
        needed = planned.node.publish or not successors or any(
            self.plan.stages[s].status == RUN for s in successors) or all(
            self.store.blob_ok(o["digest"], o["size"]) for o in outputs)  # here already: free
        if not needed:
            self.store.machine.set_last_key(stage_id, planned.key)
            self._unlink_stale(planned.node, planned.record)
            return Outcome(stage_id, CACHED, "up to date (result from the remote cache; "
                           "not downloaded: nothing here needs it)", planned.key, planned.record,
                           metrics=planned.record.get("metrics", {}))
        if self.store.fetch(planned.record):
            return self._cached(stage_id, planned.key, planned.record, reason)
        planned.reason = ("remote hit, but its outputs could not be downloaded intact"
                          if self.store.remote_in_use() else "its outputs are needed and only "
                          "the remote cache has them (no remote in use)")
        self._distrusted.add(planned.key)
        self.store.machine.forget_remote(planned.key)
        planned.status, planned.record = RUN, None
        return None

    def _unlink_stale(self, node: StageNode, record: StageRecord) -> None:
        """Outputs an older build left in the build directory for a stage whose current
        result stays on the remote: gone, so nobody mistakes them for this build's."""
        base = self.options.build_dir / node.id
        for name in record["outputs"]:
            with contextlib.suppress(FileNotFoundError):
                (base / name).unlink()

    def _cached(self, stage_id: str, key: str | None, record: StageRecord | None,
                reason: str) -> Outcome:
        assert key is not None and record is not None
        try:
            self._materialise(self.plan.stages[stage_id].node, record)
        except (OSError, StoreError) as exc:
            return Outcome(stage_id, FAILED, reason, key, record, error=str(exc))
        self.store.machine.set_last_key(stage_id, key)
        return Outcome(stage_id, CACHED, reason, key, record, metrics=record.get("metrics", {}))

    # --- one stage ---------------------------------------------------------------------------
    def _run_stage(self, stage_id: str, slot: int | None) -> Outcome:
        planned = self.plan.stages[stage_id]
        node = planned.node
        started = time.monotonic()
        log_path = self.options.build_dir / "logs" / f"{stage_id.replace('/', '__')}.log"
        try:
            job = self._job(node, planned.key or "", planned.ingredients or {})
            result = self.pool.run(job, slot)
            duration = result.duration_s or time.monotonic() - started
            if result.log or result.ran:
                self._keep_log(result.log, log_path)
            kept_log = log_path if log_path.exists() else None
            if not result.ok:
                return Outcome(stage_id, FAILED, planned.reason, planned.key,
                               duration_s=duration, error=result.error, metrics=result.metrics,
                               log_path=kept_log, check_failed=result.check_failed,
                               worker=result.worker)
            changed = self._inputs_changed(node, (planned.ingredients or {}).get("inputs", {}))
            if changed:
                return Outcome(stage_id, FAILED, planned.reason, planned.key,
                               duration_s=duration, log_path=kept_log, worker=result.worker,
                               error=f"{', '.join(changed)} changed during the build, while "
                                     f"the stage ran: its outputs are not recorded; run again")
            record = make_record(job, result)
            # Final artifacts (published, or a leaf of the graph) are wanted here.
            needed_here = node.publish or not any(True for _ in
                                                  self.plan.graph.successors(stage_id))
            if self.pool.keep(record, node.measurements, needed_here):
                self._materialise(node, record)
            else:  # its outputs stay in the shared cache, like a remote hit's
                self._unlink_stale(node, record)
            self.store.machine.set_last_key(node.id, job.key)
            return Outcome(stage_id, BUILT, planned.reason, planned.key, record,
                           duration_s=duration, metrics=record["metrics"], log_path=kept_log,
                           worker=result.worker)
        except (OSError, ModelbuildError) as exc:
            return Outcome(stage_id, FAILED, planned.reason, planned.key,
                           duration_s=time.monotonic() - started, error=str(exc),
                           log_path=log_path if log_path.exists() else None)
        finally:
            self._statuses.pop(stage_id, None)
            if slot is not None:
                with self._lock:
                    self._free_slots.append(slot)
                    self._free_slots.sort()

    def _job(self, node: StageNode, key: str, parts: dict[str, Any]) -> StageJob:
        """The stage as plain data for the pool, its inputs made reachable by digest."""
        inputs: dict[str, str] = {}
        shown: dict[str, str] = {}
        for index, (name, ref) in enumerate(sorted(node.inputs.items())):
            digest = parts["inputs"][name]
            # Outputs of one producer stay side by side under their own names: a compiled
            # model may refer to its context binary by file name.
            if isinstance(ref, OutputRef):
                inputs[name] = f"in/{ref.stage}/{ref.name}"
                shown[name] = f"{ref.name} (output of {ref.stage})"
            else:
                inputs[name] = f"in/src/{index}/{ref.path.name}"
                shown[name] = (ref.path.relative_to(self.options.project_dir).as_posix()
                               if ref.path.is_relative_to(self.options.project_dir)
                               else str(ref.path))
                self._snapshot_source(node, ref, digest)
            if not self.pool.provide(digest, ref.name if isinstance(ref, OutputRef)
                                     else ref.path.name):
                raise StoreError(f"{node.id}: input {shown[name]} is missing or corrupt in "
                                 f"the store; run again to rebuild it")
        cls = stage_class(node.kind)
        return StageJob(stage_id=node.id, key=key, ingredients=parts, inputs=inputs,
                        shown=shown, outputs=list(node.outputs), max_threads=cls.max_threads,
                        timeout=node.timeout, resources=cls.resources(node.params),
                        sys_path=[str(self.options.project_dir)], remote=cls.remote)

    def _snapshot_source(self, node: StageNode, ref: FileRef, digest: str) -> None:
        """Snapshot a source file into the store: the stage reads exactly the bytes its key
        was computed from, even if the user edits the file while the build runs. A stage may
        also read the file in place (model code is imported from the project), so a file that
        changed since planning fails the stage either way."""
        if not self.store.blob_ok(digest):
            changed = self.store.put_blob(ref.path) != digest
        else:
            changed = self.store.stats.changed(ref.path, digest)
        if changed:
            raise StoreError(f"{node.id}: input {ref.path} changed during the build; run again")

    def _inputs_changed(self, node: StageNode, digests: dict[str, str]) -> list[str]:
        """Inputs whose bytes differ now from those the stage's key was computed from.

        A stage may read a project file directly rather than its snapshot in the scratch
        directory (model code is imported from the project), and a blob may be damaged while
        the stage reads it: recording such outputs under the key would poison the cache.
        One stat per input when nothing changed.
        """
        changed = []
        for name, ref in sorted(node.inputs.items()):
            expected = digests.get(name)
            if expected is None:
                continue
            if isinstance(ref, FileRef):
                if self.store.stats.changed(ref.path, expected):
                    changed.append(str(ref.path))
            elif self.pool.reads_local_store and not self.store.blob_ok(expected):
                changed.append(f"input {ref.name} from {ref.stage}")
        return changed

    @staticmethod
    def _keep_log(text: str, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = log_path.with_name(f".{log_path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, log_path)

    def _materialise(self, node: StageNode, record: StageRecord) -> None:
        targets = [self.options.build_dir / node.id]
        if node.publish and self.options.release_dir is not None:
            targets.append(self.options.release_dir)
        for base in targets:
            for name, output in record["outputs"].items():
                dest = base / name
                if not self.store.blobs.is_materialised(output["digest"], dest):
                    self.store.get_blob(output["digest"], dest, verify=False)
