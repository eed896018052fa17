"""Warm workers: a fork server (zygote) that imported the heavy libraries once and forks a fresh
child per stage, so no stage pays `import torch` (seconds) or `import aimet_torch` (tens of
seconds) again. Bazel's persistent workers and Android's zygote are the model.

Every guarantee of a worker process stays: the child is a process of its own session and
group in its own scratch directory with its own log, so a segfault fails only its stage and a
timeout or Ctrl-C kills its whole group; results are still recorded by the coordinator only,
so a SIGKILLed build leaves nothing half-recorded. When the coordinator dies, the zygote sees
its request pipe close and kills its children; a child whose zygote died kills itself.

Fork safety: a zygote must have one thread when it forks (a lock held by another thread would
stay locked forever in the child); under qemu-user, the emulator's own thread aside. It
therefore imports only libraries that start no thread at import — torch, onnx, numpy,
aimet_torch, checked at start — never onnxruntime (its import starts a thread on some CPUs,
not on others; it costs a stage 0.2 s), and computes nothing (torch's and OpenMP's thread
pools start at the first operation, in the child). It is started with the worker's
environment — the pinned kernels of `numerics.py`, one thread — because the numeric libraries
read it when they load; a child then sets its stage's thread count as a fresh worker does
(torch and onnxruntime take it by call: `torch.set_num_threads`, session options; bytes never
depend on it, see numerics.py). A zygote that has more threads than it started with refuses to
fork, and the stage runs in a fresh `python -m buildsys.execute.worker` as before.

    coordinator ──{"id", "job", "log", "cwd"}──▶ zygote ──fork──▶ child: run_job(job.json)
                ◀──{"id", "pid"} then {"id", "exit"}──

Under `--run-under` the zygote starts under that command (an emulator runs it, and its
children are emulated forks of it). Set MODELBUILD_ZYGOTE=0 to start a fresh interpreter per
stage instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from buildsys.numerics import pin_kernels

ENABLE_ENV = "MODELBUILD_ZYGOTE"
# What a stage kind's requirements make worth importing once (distribution → module). Only
# libraries that start no thread at import: onnxruntime may, so it is never preloaded.
LIGHT: tuple[str, ...] = ()
ARRAYS = ("numpy",)  # datasets, validation, packaging: no model library (0.5 s, not 6 s)
ML = ("numpy", "onnx", "torch")
AIMET = (*ML, "aimet_torch", "aimet_torch.quantsim")
ARRAY_DISTRIBUTIONS = {"numpy", "pillow", "scikit-image"}
ML_DISTRIBUTIONS = {"torch", "onnx", "onnxruntime", "onnxruntime-qnn"}


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


def preload_for(requirements: Iterable[str]) -> tuple[str, ...]:
    """Which zygote serves a stage that imports these distributions."""
    needed = set(requirements)
    if "aimet-torch" in needed:
        return AIMET
    if needed & ML_DISTRIBUTIONS:
        return ML
    return ARRAYS if needed & ARRAY_DISTRIBUTIONS else LIGHT


def worker_env(threads: int) -> dict[str, str]:
    """The environment a stage worker runs in (what `worker._limit_threads` sets, so that a
    zygote's libraries load with it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MODELBUILD_THREADS"):
        env[var] = str(threads)
    pin_kernels(env)
    return env


class ZygoteGone(Exception):
    """The zygote cannot take the stage (it never started, refused to fork or died)."""


# --- the coordinator's side --------------------------------------------------------------------
class Zygote:
    """One zygote process: preloads `modules`, forks per request."""

    def __init__(self, modules: tuple[str, ...], threads: int = 1,
                 run_under: tuple[str, ...] = ()) -> None:
        self.modules = modules
        # Under an emulator (`--run-under qemu-x86_64 -cpu EPYC`) the zygote is the emulated
        # process and its children are forks of it: emulated too.
        self.process = subprocess.Popen(
            [*run_under, sys.executable, "-m", "buildsys.execute.zygote", *modules],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=worker_env(threads), start_new_session=True, close_fds=True)
        self._send_lock = threading.Lock()
        self._replies: dict[int, Queue[dict[str, Any]]] = {}
        self._next_id = 0
        self._gone = False
        threading.Thread(target=self._read_replies, name="zygote-replies", daemon=True).start()

    def _read_replies(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                reply = json.loads(line)
                queue = self._replies.get(int(reply["id"]))
            except (ValueError, KeyError, TypeError):
                continue
            if queue is not None:
                queue.put(reply)
        self._gone = True  # EOF: the zygote ended; wake everyone still waiting
        for queue in list(self._replies.values()):
            queue.put({"error": "the zygote ended"})

    def run(self, job: Path, log: Path, cwd: Path, timeout: float | None,
            on_start: Callable[[int], None]) -> tuple[int, bool]:
        """Run one job in a fresh child: (its exit code, whether it timed out and was killed).
        `on_start(pid)` gets the child's pid (its process group) as soon as it exists."""
        with self._send_lock:
            if self._gone or self.process.poll() is not None:
                raise ZygoteGone("the zygote is not running")
            self._next_id += 1
            request_id = self._next_id
            queue: Queue[dict[str, Any]] = Queue()
            self._replies[request_id] = queue
            line = json.dumps({"id": request_id, "job": str(job), "log": str(log),
                               "cwd": str(cwd)}) + "\n"
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(line.encode())
                self.process.stdin.flush()
            except (OSError, ValueError) as exc:
                self._replies.pop(request_id, None)
                raise ZygoteGone(f"the zygote is not running ({exc})") from exc
        try:
            started = queue.get()
            if "pid" not in started:  # refused (threads) or ended before forking
                raise ZygoteGone(str(started.get("error", "refused")))
            pid = int(started["pid"])
            on_start(pid)
            try:
                return _exit_code(queue.get(timeout=timeout)), False
            except Empty:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                return _exit_code(queue.get()), True
        finally:
            self._replies.pop(request_id, None)

    def close(self) -> None:
        """End the zygote (closing its pipe makes it kill any child left and exit)."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _exit_code(reply: dict[str, Any]) -> int:
    if "exit" not in reply:  # the zygote died while the child ran: the child killed itself
        return -int(signal.SIGKILL)
    return int(reply["exit"])


class ZygotePool:
    """The zygotes of one build, started on first use: one per set of preloaded modules.
    When the first stage spawns, zygotes for every kind of stage planned to run start too, so
    their imports overlap the stages that run before them."""

    def __init__(self, planned: Iterable[tuple[str, dict[str, Any]]] = (),
                 run_under: Iterable[str] = ()) -> None:
        self._planned = list(planned)  # (kind, params) of the stages planned to run
        self._run_under = tuple(run_under)
        self._zygotes: dict[tuple[str, ...], Zygote] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._zygotes)

    def zygote(self, modules: tuple[str, ...]) -> Zygote:
        with self._lock:
            if not self._zygotes:
                for other in sorted(_preloads(self._planned) - {modules}):
                    self._zygotes[other] = Zygote(other, run_under=self._run_under)
            if modules not in self._zygotes or self._zygotes[modules].process.poll() is not None:
                self._zygotes[modules] = Zygote(modules, run_under=self._run_under)
            return self._zygotes[modules]

    def run(self, scratch: Path, log: Path, timeout: float | None,
            on_start: Callable[[int], None]) -> tuple[int, bool]:
        """Run the job in `scratch/job.json` in a child of the zygote its stage kind needs;
        ZygoteGone when no zygote can take it (then start a worker process the old way)."""
        from buildsys.stages import stage_class

        job = json.loads((scratch / "job.json").read_text())
        modules = preload_for(stage_class(job["kind"]).requirements(job["params"]))
        zygote = self.zygote(modules)
        return zygote.run(scratch / "job.json", log, scratch, timeout, on_start)

    def close(self) -> None:
        self._finalizer()


def _preloads(stages: Iterable[tuple[str, dict[str, Any]]]) -> set[tuple[str, ...]]:
    from buildsys.stages import stage_class

    found = set()
    for kind, params in stages:
        with contextlib.suppress(Exception):  # a kind that cannot say: started when needed
            found.add(preload_for(stage_class(kind).requirements(params)))
    return found


def _close_all(zygotes: dict[Any, Zygote]) -> None:
    for zygote in list(zygotes.values()):
        zygote.close()
    zygotes.clear()


class ChildProcess:
    """A zygote's child as the runner's kill list needs it: a pid that is a process group."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


# --- the zygote's side -------------------------------------------------------------------------
def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _reply(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _child(request: dict[str, Any], zygote_pid: int) -> None:
    """In the forked child: become a worker process of its own, run the job, never return."""
    code = 1
    try:
        os.setsid()  # its own session and group: killed as a whole, no terminal signals
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # the zygote's pipes, selector and pidfds
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        _end_with(zygote_pid)
        from buildsys.execute.worker import run_job

        code = run_job(Path(request["job"]))
    except BaseException:  # whatever happens, the child must not return
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _end_with(parent: int) -> None:
    """Kill this child's group once its zygote is gone (it was killed with the coordinator)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="zygote-watch", daemon=True).start()


def serve(modules: list[str]) -> None:
    # The threads this process has before it imports anything: 1, or 2 under qemu-user (its
    # own RCU thread, which it handles across fork). Any thread beyond those is a library's.
    baseline = _thread_count()
    try:  # children are watched through pidfds (Linux ≥ 5.3); without them, no zygote
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return
    for name in modules:
        with contextlib.suppress(Exception):  # missing or broken: the stage reports it
            __import__(name)
    import buildsys.execute.worker  # noqa: F401 - what every child runs
    from buildsys.stages import STAGE_CLASSES

    for path in sorted(set(STAGE_CLASSES.values())):  # cheap: they import their work lazily
        with contextlib.suppress(Exception):
            __import__(path.partition(":")[0])

    # What is loaded now is shared with every child: the garbage collector leaves it alone, so
    # children do not copy its pages just by scanning them (Instagram's gc.freeze).
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int]] = {}  # pidfd → (request id, pid)
    pending = b""
    me = os.getpid()
    while True:
        for key, _ in selector.select():
            if key.data is None:  # a request, or the coordinator gone
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    for _, pid in children.values():
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                    # Nothing to flush or save: skip the interpreter's teardown of torch and
                    # AIMET (≈ 1 s at the end of every build).
                    os._exit(0)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    request = json.loads(line)
                    threads = _thread_count()
                    if threads != baseline:
                        _reply({"id": request["id"], "error": f"the zygote has {threads} "
                                f"threads, not {baseline}: forking it is not safe"})
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(request, me)
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = (request["id"], pid)
                    selector.register(pidfd, selectors.EVENT_READ, pid)
                    _reply({"id": request["id"], "pid": pid})
            else:  # a child ended
                request_id, pid = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _reply({"id": request_id, "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve(sys.argv[1:])
