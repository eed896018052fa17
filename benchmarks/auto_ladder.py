"""What `quantization: auto` costs: every rung's host steps, the sensitivity analysis, the
selection, per model; then a no-op rebuild.

    python benchmarks/auto_ladder.py recipes/ffnet.yaml --group auto [-j 2]
    python benchmarks/auto_ladder.py --report build.json      # read a report you have

Builds the recipe (with `--report`), prints per model and `auto` scheme: each rung's quantize
and score seconds (cached stages show what building them took, marked *), the sensitivity and
selection seconds, their sum (what `auto` adds on the host before any simulator run), the rung
chosen and its figures; then times a second, no-op build of the same selection.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def seconds(stage: dict[str, Any]) -> tuple[float, bool]:
    """(seconds, was cached): a cached stage counts what building it took."""
    if stage["status"] == "built":
        return float(stage["duration_s"]), False
    return float(stage.get("built_in_s") or 0.0), True


def ladder_table(report: dict[str, Any]) -> list[str]:
    per_scheme: dict[str, dict[str, Any]] = defaultdict(lambda: {"rungs": {}, "other": {}})
    for stage in report["stages"]:
        parts = stage["id"].split("/")
        if len(parts) >= 5 and parts[2] == "rungs":
            scheme = per_scheme["/".join(parts[:2])]
            scheme["rungs"].setdefault(parts[3], {})[parts[4]] = seconds(stage)
        elif len(parts) == 3 and parts[2] in ("sensitivity", "select"):
            per_scheme["/".join(parts[:2])]["other"][parts[2]] = (seconds(stage), stage)
    lines = []
    for name, scheme in sorted(per_scheme.items()):
        if not scheme["rungs"]:
            continue
        lines.append(f"{name}")
        total = 0.0
        select = scheme["other"].get("select")
        ladder = [r["rung"] for r in (select[1].get("metrics") or {}).get("rungs", [])] \
            if select else []
        order = ladder + sorted(set(scheme["rungs"]) - set(ladder))
        for rung in (r for r in order if r in scheme["rungs"]):
            steps = scheme["rungs"][rung]
            cells = []
            for step in ("quantize", "score"):
                if step in steps:
                    value, cached = steps[step]
                    total += value
                    cells.append(f"{step} {value:6.1f} s{'*' if cached else ' '}")
            lines.append(f"  {rung:22s} " + "  ".join(cells))
        for step, ((value, cached), _) in scheme["other"].items():
            total += value
            lines.append(f"  {step:22s} {value:6.1f} s{'*' if cached else ''}")
        lines.append(f"  host ladder total      {total:6.1f} s")
        if select and select[1].get("metrics", {}).get("chosen"):
            chosen = select[1]["metrics"]["chosen"]
            row = next(r for r in select[1]["metrics"]["rungs"] if r["rung"] == chosen)
            figures = ", ".join(f"{k} {v}" for k, v in row.items()
                                if k not in ("rung", "scheme", "misses", "passed"))
            lines.append(f"  chosen: {chosen} ({figures})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--group", action="append", default=[])
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--report", type=Path, help="read this build report instead")
    args = parser.parse_args(argv)
    if args.report:
        print("\n".join(ladder_table(json.loads(args.report.read_text()))))
        return 0
    if not args.recipe:
        parser.error("give a recipe or --report")
    groups = [a for g in args.group for a in ("--group", g)]
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "build.json"
        command = [sys.executable, "-m", "buildsys", args.recipe, *groups, "-j",
                   str(args.jobs), "--report", str(report_path)]
        started = time.monotonic()
        build = subprocess.run(command, cwd=REPO)
        cold = time.monotonic() - started
        report = json.loads(report_path.read_text())
        print("\n".join(ladder_table(report)))
        print(f"build: {cold:.1f} s wall, exit {build.returncode}")
        started = time.monotonic()
        subprocess.run(command, cwd=REPO, capture_output=True)
        print(f"no-op rebuild: {time.monotonic() - started:.1f} s wall")
    return build.returncode


if __name__ == "__main__":
    sys.exit(main())
