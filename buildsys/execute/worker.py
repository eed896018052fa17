"""Entry point of a stage worker process: `python -m buildsys.execute.worker JOB.json`.

The coordinator gives a job as plain data (kind, parameters, input files in the scratch
directory) and gets back plain data (`result.json`: ok, metrics, error). A crash here — even a
segfault in a native library — ends only this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path


def _limit_threads(threads: int, cpus: list[int] | None) -> None:
    # Set before numpy/torch/onnxruntime load: 2 cores shared by parallel stages thrash
    # badly when every library starts one thread per core.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["MODELBUILD_THREADS"] = str(threads)
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
    )
    ctx.out_dir.mkdir(exist_ok=True)
    ctx.work_dir.mkdir(exist_ok=True)
    os.chdir(ctx.work_dir)
    result: dict[str, object]
    try:
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


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
