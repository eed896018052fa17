"""The default worker pool: each stage in its own process on this machine, `-j` at a time.

A stage runs in a scratch directory inside the store, its inputs linked in by digest, as
`python -m buildsys.execute.worker job.json` in a process group of its own: a segfault, a
timeout or an out-of-memory kill fails only that stage. Its outputs become blobs of the store
the pool was given. A Dask worker runs its stages through this same pool, on its own store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.execute import zygote
from buildsys.execute.pool import StageJob, StageResult
from buildsys.execute.worker import COORDINATOR_ENV, STATUS_FILE
from buildsys.store.record import OutputEntry, StageRecord
from buildsys.store.store import Store


@dataclass
class LocalPoolOptions:
    jobs: int = 1
    # Run stages in this process (one at a time) instead of worker processes: for tests that
    # patch the network edge (AI Hub). No crash isolation; never the CLI's choice.
    inline: bool = False
    # A command each worker starts under (`--run-under`): an emulator, nice, taskset.
    run_under: list[str] = field(default_factory=list)
    cpu_count: int = field(default_factory=lambda: len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    # (kind, params) of the stages planned to run: warm workers (execute/zygote.py) preload
    # their libraries. None: every stage starts a fresh interpreter.
    warm: list[tuple[str, dict[str, Any]]] | None = None
    # Zygotes that outlive this pool (a Dask worker's, kept across its stages): used instead
    # of starting the pool's own, and not closed with it.
    zygotes: zygote.ZygotePool | None = None


class LocalProcessPool:
    name = "local"
    reads_local_store = True  # its stages read the coordinator's own blobs

    def __init__(self, store: Store, options: LocalPoolOptions) -> None:
        self.store = store
        self.options = options
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._scratches: dict[str, Path] = {}  # running stage → its scratch directory
        # Warm workers: started when the first stage runs (under --run-under's command when
        # one is given: an emulator then runs the zygote, and its children are its forks).
        self._zygotes = None if options.inline or options.warm is None \
            or not zygote.enabled() else zygote.ZygotePool(options.warm, options.run_under)
        if options.zygotes is not None and zygote.enabled():
            self._zygotes = options.zygotes

    def capacity(self) -> int:
        return max(1, self.options.jobs)

    def provide(self, digest: str, label: str) -> bool:
        return self.store.fetch_blob(digest, label=label)  # here, or from the remote cache

    def keep(self, record: StageRecord, measurements: tuple[str, ...],
             needed_here: bool) -> bool:
        # Blobs first (run put them), record last: a record never points at missing bytes.
        self.store.put_record(record["key"], record)
        self.store.push(record["key"], record, measurements)  # to the remote, if writable
        return True

    def notes(self) -> dict[str, str]:
        """Each running stage's latest status line (a remote job's state and link)."""
        out = {}
        for stage_id, scratch in list(self._scratches.items()):
            try:
                lines = (scratch / STATUS_FILE).read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines and lines[-1].strip():
                out[stage_id] = lines[-1].strip()[:300]
        return out

    def cancel_all(self) -> None:
        self._kill_all()

    def close(self) -> None:
        if self._zygotes is not None and self._zygotes is not self.options.zygotes:
            self._zygotes.close()

    @staticmethod
    def worker_name(slot: int | None) -> str:
        return "remote" if slot is None else f"local-{slot + 1}"

    # --- one stage ---------------------------------------------------------------------------
    def run(self, job: StageJob, slot: int | None) -> StageResult:
        started = time.monotonic()
        scratch = self.store.new_scratch(job.stage_id.replace("/", "_"))
        self._scratches[job.stage_id] = scratch
        digests: dict[str, str] = job.ingredients["inputs"]
        placed: list[str] = []
        try:
            for name, relative in sorted(job.inputs.items()):
                if not self.store.fetch_blob(digests[name], label=name):
                    return StageResult(False, error=f"{job.stage_id}: input {job.shown[name]} "
                                       f"is missing or corrupt in the store; run again to "
                                       f"rebuild it", ran=False)
                self.store.get_blob(digests[name], scratch / relative, verify=False)
                placed.append(digests[name])
            self._write_job(job, scratch, slot)
            returncode, timed_out = self._spawn(job.stage_id, scratch, job.timeout)
            duration = time.monotonic() - started
            log_file = scratch / "log.txt"
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            result = self._read_result(scratch, returncode, timed_out, job.timeout)
            if not result.get("ok"):
                return StageResult(False, error=self._in_job_terms(str(result.get("error")),
                                                                   scratch, job),
                                   metrics=result.get("metrics") or {},
                                   check_failed=bool(result.get("check")), log=log,
                                   duration_s=duration, worker=self.worker_name(slot))
            return StageResult(True, metrics=result.get("metrics") or {},
                               outputs=self._ingest(job, scratch), log=log,
                               duration_s=duration, worker=self.worker_name(slot))
        finally:
            self._scratches.pop(job.stage_id, None)
            self.store.remove_links(scratch, placed)

    def _threads_and_cpus(self, job: StageJob, slot: int | None) -> tuple[int, list[int] | None]:
        if slot is None:  # a remote stage: it waits, it does not compute
            return 1, None
        cpus = self.options.cpu_count
        jobs = max(1, self.options.jobs)
        per_worker = max(1, cpus // jobs)
        threads = max(1, min(per_worker, job.max_threads))
        if jobs == 1 or jobs * per_worker > cpus:
            return threads, None
        available = sorted(os.sched_getaffinity(0))
        return threads, available[slot * per_worker:(slot + 1) * per_worker]

    def _write_job(self, job: StageJob, scratch: Path, slot: int | None) -> None:
        threads, cpus = self._threads_and_cpus(job, slot)
        parts = job.ingredients
        # The parameters as keyed (packaging adds its upstream keys there).
        worker_job = {"stage_id": job.stage_id, "kind": job.kind, "params": parts["params"],
                      "inputs": job.inputs, "tools": parts["tools"],
                      "threads": threads, "cpus": cpus,
                      "extras": {"sys_path": job.sys_path, "stage_key": job.key,
                                 "memo_dir": str(self.store.machine.memo_dir(job.key))}}
        (scratch / "job.json").write_text(json.dumps(worker_job, sort_keys=True))

    @staticmethod
    def _in_job_terms(text: str, scratch: Path, job: StageJob) -> str:
        """A stage's error names the user's files (weights.pt), not their snapshots in the
        scratch directory, which is gone by the time the message is read."""
        for name, relative in sorted(job.inputs.items(), key=lambda item: -len(item[1])):
            text = text.replace(str(scratch / relative), job.shown[name])
        return text

    def _ingest(self, job: StageJob, scratch: Path) -> dict[str, OutputEntry]:
        out_dir = scratch / "out"
        produced = sorted(p for p in out_dir.rglob("*") if p.is_file())
        names = [p.relative_to(out_dir).as_posix() for p in produced]
        missing = [n for n in job.outputs if n not in names]
        if missing:
            raise ModelbuildError(f"{job.stage_id}: stage did not write {', '.join(missing)}")
        outputs: dict[str, OutputEntry] = {}
        for name, path in zip(names, produced, strict=True):
            size = path.stat().st_size
            outputs[name] = {"digest": self.store.put_blob(path), "size": size}
        return outputs

    def _spawn(self, stage_id: str, scratch: Path, timeout: float | None) -> tuple[int, bool]:
        if self.options.inline:
            return _run_inline(scratch), False
        if self._zygotes is not None:  # a child forked from a warm zygote
            def started(pid: int) -> None:
                with self._lock:
                    self._processes[stage_id] = zygote.ChildProcess(pid)  # type: ignore[assignment]
            try:
                return self._zygotes.run(scratch, scratch / "log.txt", timeout, started)
            except zygote.ZygoteGone:
                pass  # no zygote can take it: a fresh interpreter, as below
            finally:
                with self._lock:
                    self._processes.pop(stage_id, None)
        # The worker watches for this pid: it ends (with its commands) if we are killed.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", COORDINATOR_ENV: str(os.getpid())}
        with open(scratch / "log.txt", "wb") as log:
            process = subprocess.Popen(
                [*self.options.run_under, sys.executable, "-m", "buildsys.execute.worker",
                 str(scratch / "job.json")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=scratch, start_new_session=True,  # own process group: kill it whole
            )
            with self._lock:
                self._processes[stage_id] = process
            try:
                return process.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return process.wait(), True
            finally:
                with self._lock:
                    self._processes.pop(stage_id, None)

    def _kill_all(self) -> None:
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            _kill_group(process)

    @staticmethod
    def _read_result(scratch: Path, returncode: int, timed_out: bool,
                     timeout: float | None) -> dict[str, Any]:
        if timed_out:
            return {"ok": False, "error": f"timed out after {timeout:g} s and was killed"}
        if returncode < 0:
            name = signal.Signals(-returncode).name
            return {"ok": False, "error": f"worker killed by {name} (a crash in native code?)"}
        try:
            result = json.loads((scratch / "result.json").read_text())
        except (FileNotFoundError, ValueError):
            return {"ok": False, "error": f"worker exited with status {returncode} "
                                          f"without a result"}
        if result.get("ok") and returncode != 0:
            return {"ok": False, "error": f"worker exited with status {returncode}"}
        return result


def _run_inline(scratch: Path) -> int:
    import contextlib

    from buildsys.execute.worker import run_job

    cwd = os.getcwd()
    with open(scratch / "log.txt", "w") as log, contextlib.redirect_stderr(log), \
            contextlib.redirect_stdout(log):
        try:
            return run_job(scratch / "job.json")
        finally:
            os.chdir(cwd)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
