"""Randomised kill test: SIGKILL a build at many points, resume it, check nothing is wrong.

    python benchmarks/faults.py [--points 50] [--seed 0] [--steps 15] [--jobs 2] [-v]

A reference build of a generated recipe (--steps command steps in a DAG, each sleeping a
little) gives the expected artifacts and lock. Then, for each of --points seeded random
delays: start the same build in a fresh project, SIGKILL its whole process group after the
delay, run the build again to completion, and check that

- the re-run succeeds and reuses every stage that had completed before the kill,
- every artifact in build/ and the lock equal the reference build's,
- `modelbuild cache verify` passes, no process of the killed build survives it, and the
  re-run swept the killed build's temporary files out of the store.

Prints "kill points: N, builds recovered: N, wrong artifacts: 0" (with the real counts) and
exits 1 if any point was not recovered or produced a wrong artifact.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.reliability.helpers import (  # noqa: E402
    chain_recipe,
    kill_and_recover,
    kill_schedule,
    reference_build,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="kill points (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--steps", type=int, default=15, help="command steps in the recipe")
    parser.add_argument("--sleep", type=float, default=0.15, help="mean sleep per step, s")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the projects of failed points")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per kill point")
    args = parser.parse_args(argv)

    recipe = chain_recipe(args.steps, sleep=args.sleep, seed=args.seed)
    jobs = ("-j", str(args.jobs))
    work = Path(tempfile.mkdtemp(prefix="modelbuild-faults-"))
    started = time.monotonic()
    try:
        reference = reference_build(work / "reference", recipe, *jobs)
        # Kill anywhere from just after start to just after the end of a whole build.
        delays = kill_schedule(args.points, reference.wall_s * 1.05, seed=args.seed)
        recovered = wrong = 0
        reused = 0
        for n, delay in enumerate(delays):
            root = work / f"point-{n:03d}"
            point = kill_and_recover(root, recipe, delay, reference, *jobs)
            ok = point.recovered and not point.problems and not point.wrong
            recovered += point.recovered and not point.problems
            wrong += bool(point.wrong)
            reused += len(point.completed_before)
            if args.verbose or not ok:
                print(f"  point {n:3d}: kill at {delay:5.2f} s, {len(point.completed_before):2d} "
                      f"stage(s) done before, {len(point.rerun_built):2d} run after"
                      + ("" if ok else f"  PROBLEMS: {point.wrong + point.problems}"),
                      file=sys.stderr)
            if ok or not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"reference build {reference.wall_s:.1f} s; {reused} completed stage(s) reused "
          f"across all points; total {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"kill points: {len(delays)}, builds recovered: {recovered}, wrong artifacts: {wrong}")
    return 0 if recovered == len(delays) and wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
