"""The report page of a built recipe: render time (cold process, then warm), size, and
what deciding *not* to render costs a no-op build.

    python benchmarks/report.py recipes/tiny.yaml        # build it first: modelbuild RECIPE
    python benchmarks/report.py recipes/ffnet.yaml --runs 3

Targets (issue 17): the FFNet default build's page renders in under 5 s and stays under 10 MB.
Nothing is built here: the recipe's store must already hold its release.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLD = (
    "import sys, time; t = time.monotonic()\n"
    "from pathlib import Path\n"
    "from buildsys.build import open_store\n"
    "from buildsys.recipe.load import load_recipe\n"
    "from buildsys.report.page import write_page\n"
    "recipe = load_recipe(Path(sys.argv[1]))\n"
    "store = open_store(recipe, None)\n"
    "page = write_page(recipe, store, path=Path(sys.argv[2]))\n"
    "print(time.monotonic() - t, time.process_time(), page.bytes, page.charts)\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="warm renders to time")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from buildsys.build import open_store
    from buildsys.recipe.load import load_recipe
    from buildsys.report import RELEASE_STAGE
    from buildsys.report.page import write_page

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        # A fresh process: imports (matplotlib, Jinja2, numpy, Pillow) included, as a build
        # that ends with a render pays them.
        cold = subprocess.run([sys.executable, "-c", COLD, str(args.recipe), str(out)],
                              capture_output=True, text=True, cwd=REPO,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        if cold.returncode != 0:
            print(cold.stderr, file=sys.stderr)
            return 1
        cold_s, cold_cpu_s, size, charts = cold.stdout.split()
        recipe = load_recipe(args.recipe)
        store = open_store(recipe, None)
        try:
            warm, warm_cpu = [], []
            for _ in range(args.runs):
                started, cpu = time.monotonic(), time.process_time()
                write_page(recipe, store, path=out)
                warm.append(time.monotonic() - started)
                warm_cpu.append(time.process_time() - cpu)
            # What a no-op build spends on the page: one record lookup and a stat.
            started = time.monotonic()
            for _ in range(1000):
                store.index.get_last_key(RELEASE_STAGE)
                out.exists()
            decide_us = (time.monotonic() - started) * 1000
        finally:
            store.close()
    # CPU seconds beside wall seconds: on a shared machine the wall time mostly measures
    # the other processes.
    print(f"report page of {recipe.name}: {int(size) / 1e6:.2f} MB, {charts} charts; "
          f"render {float(cold_s):.2f} s wall / {float(cold_cpu_s):.2f} s CPU in a fresh "
          f"process (imports included), {statistics.median(warm):.2f} s wall / "
          f"{statistics.median(warm_cpu):.2f} s CPU warm (median of {args.runs}); "
          f"no-op check {decide_us:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
