"""The machine-readable build report (`--report build.json`) and the end-of-build summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.execute.runner import Outcome
from buildsys.plan.status import OUTCOMES


def report_dict(recipe_name: str, outcomes: dict[str, Outcome], wall_s: float,
                mismatches: list[str] | None = None,
                started_at: str | None = None) -> dict[str, Any]:
    """`started_at`: when execution began (UTC, ISO 8601); each stage's `started_s` counts
    from there. `built_in_s` of a cached stage: what building it took when it was built."""
    stages = []
    for stage_id in sorted(outcomes):
        o = outcomes[stage_id]
        entry: dict[str, Any] = {"id": stage_id, "status": o.status, "reason": o.reason,
                                 "key": o.key, "duration_s": round(o.duration_s, 3),
                                 "metrics": o.metrics}
        if o.started_s is not None:
            entry["started_s"] = o.started_s
        if o.worker:
            entry["worker"] = o.worker
        if o.record:
            entry["outputs"] = o.record["outputs"]
            if o.status != "built" and o.record.get("duration_s") is not None:
                entry["built_in_s"] = o.record["duration_s"]
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
            "started_at": started_at, "stages": stages}


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
    counts = dict.fromkeys(OUTCOMES, 0)
    for o in outcomes.values():
        counts[o.status] += 1
    return ", ".join(f"{n} {status}" for status, n in counts.items()) + f" in {wall_s:.1f} s"


def device_summary(outcomes: dict[str, Outcome], kinds: dict[str, str]) -> str:
    """What Qualcomm's export scripts print per variant, for every AI Hub inference of this
    build (run now or cached): device, runtime, estimated inference time, peak memory range,
    ops per compute unit, and the PSNR its validation measured. Empty if there were none."""
    rows = []
    for stage_id in sorted(outcomes):
        outcome = outcomes[stage_id]
        if kinds.get(stage_id) != "aihub_infer" or not outcome.ok or not outcome.metrics:
            continue
        m = outcome.metrics
        peak = m.get("peak_memory_range_mb")
        units = m.get("compute_unit_ops") or {}
        variant = stage_id.rsplit("/", 1)[0]
        validation = outcomes.get(f"{variant}/validate")
        psnr = _lowest_psnr(validation.metrics if validation else {})
        rows.append((variant, m.get("device", "?"), m.get("runtime", "?"),
                     f"{m.get('estimated_inference_time_ms', '?')} ms",
                     f"{peak[0]}-{peak[1]} MB" if peak else "?",
                     "/".join(str(units.get(u, 0)) for u in ("NPU", "GPU", "CPU")),
                     f"{psnr:.1f} dB" if psnr is not None else "-", m.get("url", "")))
    if not rows:
        return ""
    header = ("variant", "device", "runtime", "inference", "peak memory", "NPU/GPU/CPU ops",
              "PSNR", "job")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["AI Hub on-device results (profiled on real devices by AI Hub):"]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def _lowest_psnr(validation: dict[str, Any]) -> float | None:
    figures = [o.get("psnr_db") for o in (validation.get("outputs") or {}).values()]
    figures = [f for f in figures if isinstance(f, int | float)]
    return min(figures) if figures else None
