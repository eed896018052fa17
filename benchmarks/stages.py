"""What a stage costs besides its own work: worker start-up, imports paid per stage, and
modelbuild's overhead — with warm workers (a zygote forks each stage) and without
(MODELBUILD_ZYGOTE=0: a fresh interpreter per stage).

    python benchmarks/stages.py [--steps 300] [--recipe recipes/tiny.yaml] [--aimet]
                                [--no-recipe]

1. Worker start: a trivial job (a `true` command stage) run 20 times by a fresh
   `python -m buildsys.execute.worker` and by a warm zygote (numpy, onnx, torch preloaded).
2. Imports each stage paid in a fresh interpreter: numpy + onnx + torch (+ aimet_torch with
   --aimet, ≈ 20 s); a forked stage pays none of them.
3. Per-stage overhead: a cold build of N independent `cp` steps, wall time / N.
4. A small model's cold build with -j 1: each stage's time and modelbuild's own overhead.

Targets (issue 13, 2-core machine): per-stage overhead ≤ 15 ms (1,000 `cp` steps ≤ 15 s).
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
sys.path.insert(0, str(REPO))

TRIVIAL_JOB = {"stage_id": "bench", "kind": "command", "params": {"cmd": ["true"], "outs": []},
               "inputs": {}, "tools": {}, "threads": 1, "cpus": None, "extras": {}}


def env(zygote: bool) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MODELBUILD_ZYGOTE": "1" if zygote else "0"}
    out.pop("MODELBUILD_CACHE_DIR", None)
    return out


def worker_start(runs: int = 20) -> None:
    from buildsys.execute.zygote import ML, Zygote

    with tempfile.TemporaryDirectory() as tmp:
        def fresh_job() -> Path:
            scratch = Path(tempfile.mkdtemp(dir=tmp))
            (scratch / "job.json").write_text(json.dumps(TRIVIAL_JOB))
            return scratch

        fresh = []
        for _ in range(runs):
            scratch = fresh_job()
            started = time.perf_counter()
            with open(scratch / "log.txt", "wb") as log:
                subprocess.run([sys.executable, "-m", "buildsys.execute.worker",
                                str(scratch / "job.json")], cwd=scratch, env=env(False),
                               stdout=log, stderr=subprocess.STDOUT, check=True)
            fresh.append(time.perf_counter() - started)
        zygote = Zygote(ML, 1)
        try:
            started = time.perf_counter()
            scratch = fresh_job()
            zygote.run(scratch / "job.json", scratch / "log.txt", scratch, 600, lambda pid: None)
            warmup = time.perf_counter() - started
            forked = []
            for _ in range(runs):
                scratch = fresh_job()
                started = time.perf_counter()
                code, _ = zygote.run(scratch / "job.json", scratch / "log.txt", scratch, 60,
                                     lambda pid: None)
                forked.append(time.perf_counter() - started)
                assert code == 0, (scratch / "log.txt").read_text()
        finally:
            zygote.close()
    median = sorted(fresh)[len(fresh) // 2], sorted(forked)[len(forked) // 2]
    print(f"worker start + a trivial stage (median of {runs}): fresh interpreter "
          f"{1000 * median[0]:.1f} ms, forked from a warm zygote {1000 * median[1]:.1f} ms "
          f"(the zygote's own start with numpy+onnx+torch: {warmup:.1f} s, once per build)")


def import_cost(aimet: bool) -> None:
    sets = [("numpy", "onnx", "torch")] + ([("aimet_torch",)] if aimet else [])
    for modules in sets:
        code = f"import {', '.join(modules)}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env(False), check=True,
                       stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        print(f"imports a fresh stage worker pays: {code:<28} {seconds:6.2f} s per stage "
              f"(forked from a zygote: 0)")


def steps_overhead(n: int) -> None:
    for zygote in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            (directory / "src").mkdir()
            lines = ["recipe: copies", "steps:"]
            for i in range(n):
                (directory / "src" / f"{i}.txt").write_text(f"{i}\n")
                lines.append(f"  c{i}:\n    cmd: [cp, src/{i}.txt, o{i}.txt]\n"
                             f"    deps: [src/{i}.txt]\n    outs: [o{i}.txt]")
            (directory / "recipe.yaml").write_text("\n".join(lines) + "\n")
            (directory / "pyproject.toml").write_text("")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "buildsys", "recipe.yaml", "-q"],
                           cwd=directory, env=env(zygote), check=True)
            wall = time.perf_counter() - started
        print(f"{n} cp steps cold, {'zygote' if zygote else 'fresh workers'}: {wall:6.2f} s = "
              f"{1000 * wall / n:5.1f} ms per stage", flush=True)


def recipe_build(recipe_path: Path, zygote: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / recipe_path.name
        shutil.copy(recipe_path, recipe)
        (Path(tmp) / "pyproject.toml").write_text("")
        report_path = Path(tmp) / "report.json"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "buildsys", str(recipe), "-j", "1", "-q",
                        "--report", str(report_path)], cwd=tmp, env=env(zygote), check=True)
        wall = time.perf_counter() - started
        report = json.loads(report_path.read_text())
    rows = sorted(((s["duration_s"], s["id"]) for s in report["stages"]
                   if s["status"] == "built"), reverse=True)
    inside = sum(d for d, _ in rows)
    by_kind: dict[str, list[float]] = {}
    for duration, stage_id in rows:
        kind = stage_id.rsplit("/", 1)[-1].split("@")[0]
        by_kind.setdefault(kind, []).append(duration)
    label = "zygote" if zygote else "fresh workers"
    print(f"\n{recipe_path.name} cold, -j 1, {label}: by stage kind (stages, total, mean)")
    for kind, durations in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {kind:<24} {len(durations):3d}  {sum(durations):7.2f} s  "
              f"{sum(durations) / len(durations):6.2f} s")
    overhead = wall - inside
    print(f"  stages: {len(rows)}   wall: {wall:.2f} s   inside stages: {inside:.2f} s   "
          f"modelbuild overhead: {overhead:.2f} s ({100 * overhead / wall:.1f} %)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "tiny.yaml")
    parser.add_argument("--no-recipe", action="store_true", help="skip the model build")
    parser.add_argument("--aimet", action="store_true", help="also time import aimet_torch")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    worker_start()
    import_cost(args.aimet)
    steps_overhead(args.steps)
    if not args.no_recipe:
        for zygote in (False, True):
            recipe_build(args.recipe, zygote)


if __name__ == "__main__":
    main()
