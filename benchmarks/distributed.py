"""Stages on a Dask cluster against this machine's process pool: what the cluster costs.

    python benchmarks/distributed.py [RECIPE] [--chain N] [--no-scheduler] [--pair]
                                     [--pairs N]   # default recipes/tiny.yaml, 20, 1
    python benchmarks/distributed.py --pair --pairs 7             # ≈ 4 min on 2 cores
    python benchmarks/distributed.py recipes/ffnet.yaml --pair    # ≈ 20 min on 2 cores

1. The recipe, cold (fresh copy, empty store), built locally with `-j 2`, then on a
   2-worker LocalCluster (`--workers 2`, single-threaded workers in the build's process,
   sharing this machine's store; `--pair`: only these two), then the same pushing to a
   loopback SeaweedFS server as the remote cache (as `-j 2 --remote` would), then twice on
   a running cluster of 2 worker processes (`--scheduler`, as a real cluster; each time a
   fresh copy and an empty remote prefix: cold builds; the second finds the workers' warm
   zygotes started). Wall times of the whole command and of the build (report), the sum of
   stage times, and the overhead against local in per cent. Target (issue 15): within 10 %.
   `--pairs N` builds the first two N times, in turn, and gives the median of the N ratios
   (a pair's builds run minutes apart, so the machine's drift cancels out).
2. Per-stage dispatch overhead: a chain of N trivial command steps (each waits for the
   previous one, so nothing overlaps) on each pool; the span from the first stage's start to
   the last one's end, divided by N, and the difference: what handing one stage to a Dask
   worker of `--workers 2` (submit, run, return) adds to a local one.

Cold builds only: on a shared machine, run it when nothing else runs, and say so otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This file's folder comes first on sys.path, and this file's name would shadow Dask's
# `distributed` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(REPO))

from tests.remote.conftest import CREDENTIALS, start_seaweed  # noqa: E402

SKIP = {"build", "release", "dist", ".cache"}


def fresh_copy(recipe: Path, where: Path) -> Path:
    """The recipe's folder as a fresh checkout would have it, a project of its own."""
    shutil.copytree(recipe.parent, where, ignore=lambda d, names: [
        n for n in names if Path(d) == recipe.parent and (n in SKIP or n.endswith(".lock"))])
    (where / "modelbuild.toml").touch()
    return where / recipe.name


def modelbuild(recipe: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """Run the CLI; (wall seconds, its JSON report)."""
    report = recipe.parent / "bench-report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **CREDENTIALS}
    env.pop("MODELBUILD_CACHE_DIR", None)
    env.pop("MODELBUILD_SCHEDULER", None)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "buildsys", recipe.name, "-q",
                             "--report", str(report), *args], cwd=recipe.parent, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"modelbuild {recipe.name} {' '.join(args)} failed:\n"
                         f"{result.stderr[-3000:]}")
    return wall, json.loads(report.read_text())


def span(report: dict[str, Any]) -> float:
    """From the first built stage's start to the last one's end."""
    built = [s for s in report["stages"] if s["status"] == "built"]
    return max(s["started_s"] + s["duration_s"] for s in built) - \
        min(s["started_s"] for s in built)


def stage_seconds(report: dict[str, Any]) -> float:
    return sum(s["duration_s"] for s in report["stages"] if s["status"] == "built")


def chain_recipe(steps: int) -> str:
    lines = ["recipe: chain", "steps:"]
    for i in range(steps):
        code = f"open('s{i}.txt', 'w').write(str({i}) + (open('s{i - 1}.txt').read() " \
               f"if {i} else ''))"
        lines += [f"  s{i}:", f"    cmd: [{json.dumps(sys.executable)}, \"-c\", "
                  f"{json.dumps(code)}]", f"    outs: [s{i}.txt]"]
        if i:
            lines.append(f"    deps: [s{i - 1}.txt]")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_cluster() -> Iterator[str]:
    """A 2-worker LocalCluster that outlives the builds using it (as a team's cluster does)."""
    from distributed import LocalCluster

    os.environ.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **CREDENTIALS,
                       "MODELBUILD_WORKER_CPUS": str(max(1, len(os.sched_getaffinity(0)) // 2))})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, resources={"htp_sim": 1, "aihub": 1}) as cluster:
        yield str(cluster.scheduler_address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", type=Path, default=REPO / "recipes" / "tiny.yaml")
    parser.add_argument("--chain", type=int, default=20, help="steps of the dispatch chain")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="skip the builds on a running cluster (--scheduler)")
    parser.add_argument("--pair", action="store_true", help="only local -j 2 and --workers 2 "
                        "(no remote, no running cluster, no dispatch chain): for big recipes")
    parser.add_argument("--pairs", type=int, default=1, metavar="N",
                        help="build local -j 2 and --workers 2 N times, in turn: the median "
                        "ratio of the pairs")
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_seaweed(tmp / "seaweedfs")
        try:
            rows = []
            pairs = []
            for number in range(args.pairs):
                local_wall, local = modelbuild(fresh_copy(recipe, tmp / "local"), "-j", "2")
                shared_wall, shared = modelbuild(fresh_copy(recipe, tmp / "shared"),
                                                 "--workers", "2")
                pairs.append((local_wall, shared_wall))
                if number + 1 < args.pairs:  # (a store per build: FFNet's are gigabytes)
                    shutil.rmtree(tmp / "local")
                    shutil.rmtree(tmp / "shared")
            rows.append(("local -j 2", local_wall, local))
            rows.append(("--workers 2", shared_wall, shared))
            if not args.pair:
                dask_wall, dask = modelbuild(fresh_copy(recipe, tmp / "dask"), "--workers",
                                             "2", "--remote", server.url("bench"))
                rows.append(("  and --remote", dask_wall, dask))
            if not (args.no_scheduler or args.pair):
                with running_cluster() as address:
                    for attempt in (1, 2):
                        wall, report = modelbuild(
                            fresh_copy(recipe, tmp / f"running{attempt}"), "--scheduler",
                            address, "--remote", server.url(f"running{attempt}"))
                        rows.append((f"--scheduler #{attempt}", wall, report))
            print(f"{recipe.name}, cold, {len(local['stages'])} stages "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
            print(f"  {'':<15}{'built':>6}{'command':>9}{'build':>9}{'stage sum':>11}"
                  f"{'overhead':>10}")
            for name, wall, report in rows:
                built = sum(1 for s in report["stages"] if s["status"] == "built")
                print(f"  {name:<15}{built:>6}{wall:>8.1f}s{report['wall_time_s']:>8.1f}s"
                      f"{stage_seconds(report):>10.1f}s{100 * (wall / local_wall - 1):>+9.1f}%")
            if args.pairs > 1:
                ratios = sorted(b / a for a, b in pairs)
                print(f"  {args.pairs} pairs: local -j 2 {median(a for a, _ in pairs):.1f} s, "
                      f"--workers 2 {median(b for _, b in pairs):.1f} s (medians); ratio "
                      f"median {median(ratios):.3f} ({ratios[0]:.3f}–{ratios[-1]:.3f}): "
                      f"{100 * (median(ratios) - 1):+.1f} %")

            if args.pair:
                return
            chain = tmp / "chain" / "chain.yaml"
            chain.parent.mkdir()
            chain.write_text(chain_recipe(args.chain))
            _, local_chain = modelbuild(fresh_copy(chain, tmp / "chain-local"), "-j", "1")
            _, dask_chain = modelbuild(fresh_copy(chain, tmp / "chain-dask"), "--workers", "2")
            per_local = span(local_chain) / args.chain
            per_dask = span(dask_chain) / args.chain
            print(f"dispatch, a chain of {args.chain} trivial steps: {per_local * 1000:.0f} ms "
                  f"a stage locally, {per_dask * 1000:.0f} ms on the cluster: "
                  f"{(per_dask - per_local) * 1000:+.0f} ms per stage handed to a worker")
        finally:
            server.kill()


if __name__ == "__main__":
    main()
