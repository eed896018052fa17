"""The machine-readable build report (`--report build.json`) and the end-of-build summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.execute.runner import Outcome


def report_dict(recipe_name: str, outcomes: dict[str, Outcome], wall_s: float,
                mismatches: list[str] | None = None) -> dict[str, Any]:
    stages = []
    for stage_id in sorted(outcomes):
        o = outcomes[stage_id]
        entry: dict[str, Any] = {"id": stage_id, "status": o.status, "reason": o.reason,
                                 "key": o.key, "duration_s": round(o.duration_s, 3),
                                 "metrics": o.metrics}
        if o.record:
            entry["outputs"] = o.record["outputs"]
        if o.error:
            entry["error"] = o.error
        if o.log_path:
            entry["log"] = str(o.log_path)
        stages.append(entry)
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    return {"recipe": recipe_name, "ok": all(o.ok for o in outcomes.values()) and not mismatches,
            "wall_time_s": round(wall_s, 3), "counts": counts, "lock_mismatches": mismatches or [],
            "stages": stages}


def write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelbuildError(f"cannot write the report {path}: {exc.strerror or exc}") from exc


def summary_line(outcomes: dict[str, Outcome], wall_s: float) -> str:
    counts = {s: 0 for s in ("built", "cached", "failed", "skipped")}
    for o in outcomes.values():
        counts[o.status] += 1
    return (f"{counts['built']} built, {counts['cached']} cached, {counts['failed']} failed, "
            f"{counts['skipped']} skipped in {wall_s:.1f} s")
