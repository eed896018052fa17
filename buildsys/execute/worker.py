"""Entry point of a stage worker process: `python -m buildsys.execute.worker JOB.json`.

The coordinator gives a job as plain data (kind, parameters, input files in the scratch
directory) and gets back plain data (`result.json`: ok, metrics, error). A crash here — even a
segfault in a native library — ends only this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from buildsys.numerics import check_cpu_class, pin_kernels
from buildsys.toolchain import check_tool_versions

# The coordinator's pid, set by the runner: a worker ends when its coordinator is gone.
COORDINATOR_ENV = "MODELBUILD_COORDINATOR_PID"
STATUS_FILE = "status.txt"  # the stage's latest status line (StageContext.status)


def _limit_threads(threads: int, cpus: list[int] | None) -> None:
    # Set before numpy/torch/onnxruntime load: 2 cores shared by parallel stages thrash
    # badly when every library starts one thread per core.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["MODELBUILD_THREADS"] = str(threads)
    # Same bytes on every CPU: the numeric libraries read these when they load.
    pin_kernels(os.environ)
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def run_job(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    scratch = job_path.parent
    _limit_threads(int(job["threads"]), job.get("cpus"))
    # User model code (`python: mymodels:net`) is importable from the recipe's project.
    sys.path[:0] = (job.get("extras") or {}).get("sys_path", [])

    from buildsys.errors import ModelbuildError
    from buildsys.stages import stage_class
    from buildsys.stages.base import CheckFailed, StageContext

    ctx = StageContext(
        stage_id=job["stage_id"],
        params=job["params"],
        inputs={name: scratch / rel for name, rel in job["inputs"].items()},
        out_dir=scratch / "out",
        work_dir=scratch / "work",
        threads=int(job["threads"]),
        extras=job.get("extras") or {},
        status_path=scratch / STATUS_FILE,
    )
    ctx.out_dir.mkdir(exist_ok=True)
    ctx.work_dir.mkdir(exist_ok=True)
    os.chdir(ctx.work_dir)
    result: dict[str, object]
    try:
        refusal = check_tool_versions(job.get("tools") or {}) or \
            check_cpu_class(job.get("tools") or {})
        if refusal:
            raise ModelbuildError(f"{job['stage_id']}: {refusal}")
        metrics = stage_class(job["kind"])().run(ctx) or {}
        result = {"ok": True, "metrics": metrics}
    except CheckFailed as exc:
        result = {"ok": False, "error": str(exc), "metrics": exc.metrics, "check": True}
    except ModelbuildError as exc:
        result = {"ok": False, "error": str(exc), "metrics": {}}
    except Exception as exc:  # a bug or a library error: keep the traceback in the log
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "metrics": {}}
    tmp = scratch / "result.json.tmp"
    tmp.write_text(json.dumps(result, sort_keys=True, default=str))
    os.replace(tmp, scratch / "result.json")
    return 0 if result["ok"] else 1


def _end_with_coordinator() -> None:
    """Kill this worker and the commands it started once the coordinator has died.

    A worker runs in its own session, so a crash here cannot take the coordinator down; but
    then a SIGKILL of the coordinator's process group (kill -9, the OOM killer) does not reach
    the worker either, which would run on unsupervised: no timeout, nobody to read its result.
    The worker is its session's group leader, so killing its group also ends its commands.
    """
    expected = os.environ.get(COORDINATOR_ENV, "")
    if not expected.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(0.2)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="coordinator-watch", daemon=True).start()


if __name__ == "__main__":
    _end_with_coordinator()
    sys.exit(run_job(Path(sys.argv[1])))
