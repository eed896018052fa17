"""Wall time of each stage for a small model, and modelbuild's own overhead.

    python benchmarks/stages.py [--recipe recipes/tiny.yaml]

Builds the recipe cold with -j 1 in a scratch copy. "Inside stages" is the lifetime of each
stage's worker process (its Python start-up and imports included: a stage that needs torch
must import it); the overhead is everything else — loading and planning the recipe, hashing,
storing blobs and records, materialising outputs, scheduling. Target: overhead < 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "tiny.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / args.recipe.name
        shutil.copy(args.recipe, recipe)
        report_path = Path(tmp) / "report.json"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "buildsys", str(recipe), "-j", "1", "-q",
                        "--report", str(report_path)], cwd=tmp, env=env, check=True)
        wall = time.perf_counter() - started
        report = json.loads(report_path.read_text())
    rows = sorted(((s["duration_s"], s["id"]) for s in report["stages"]
                   if s["status"] == "built"), reverse=True)
    inside = sum(d for d, _ in rows)
    by_kind: dict[str, float] = {}
    for duration, stage_id in rows:
        print(f"{duration:8.2f} s  {stage_id}")
        kind = stage_id.rsplit("/", 1)[-1].split("@")[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + duration
    print("\nby stage kind:")
    for kind, total in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{total:8.2f} s  {kind}")
    overhead = wall - inside
    print(f"\nstages: {len(rows)}   wall (whole process): {wall:.2f} s   inside stages: "
          f"{inside:.2f} s   modelbuild overhead: {overhead:.2f} s "
          f"({100 * overhead / wall:.1f} %)")


if __name__ == "__main__":
    main()
