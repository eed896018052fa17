"""No-op rebuild wall time: the example recipe, and generated recipes of 1,000 and 10,000
command stages. Also asserts the no-op path imports neither torch nor onnxruntime.

    python benchmarks/noop.py [--sizes 1000 10000] [--example recipes/tiny.yaml]

Targets on a 2-core machine: example < 1 s, 1,000 stages < 3 s, 10,000 < 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORT_PROBE = (
    "import sys, runpy; sys.argv = ['modelbuild', *sys.argv[1:]]\n"
    "from buildsys.cli import main\n"
    "code = main()\n"
    "heavy = sorted(m for m in ('torch', 'onnxruntime', 'aimet_torch', 'onnx') "
    "if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def generated_recipe(n: int) -> str:
    """n command stages in chains of 10 (each stage reads the previous one's output)."""
    lines = ["recipe: generated", "steps:"]
    for i in range(n):
        dep = f"    deps: [s{i - 1}.txt]\n" if i % 10 else ""
        lines.append(f"  s{i}:\n    cmd: [\"sh\", \"-c\", \"echo {i} > s{i}.txt\"]\n{dep}"
                     f"    outs: [s{i}.txt]")
    return "\n".join(lines) + "\n"


def run(recipe: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(recipe), "-q", *args],
                            cwd=recipe.parent, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build of {recipe} failed:\n{result.stderr[-3000:]}")
    heavy = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")][-1]
    return elapsed, heavy.removeprefix("HEAVY=")


def measure(recipe: Path, label: str, repeats: int = 3) -> dict[str, object]:
    cold, _ = run(recipe)
    times, heavy = [], ""
    for _ in range(repeats):
        elapsed, heavy = run(recipe)
        times.append(elapsed)
    best = min(times)
    print(f"{label:<28} cold build {cold:7.2f} s   no-op {best:6.3f} s "
          f"(best of {repeats})   heavy imports on no-op: {heavy or 'none'}")
    assert not heavy, f"no-op rebuild of {label} imported {heavy}"
    return {"label": label, "cold_s": round(cold, 3), "noop_s": round(best, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--example", type=Path, default=REPO / "recipes" / "tiny.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.example and args.example.name:
            example_dir = Path(tmp) / "example"
            example_dir.mkdir()
            # Copy the example beside a private cache so the figure is reproducible.
            subprocess.run(["cp", "-r", str(args.example.parent) + "/.", str(example_dir)],
                           check=True)
            results.append(measure(example_dir / args.example.name,
                                   f"example ({args.example.name})", repeats=3))
        for n in args.sizes:
            directory = Path(tmp) / f"gen{n}"
            directory.mkdir()
            recipe = directory / "recipe.yaml"
            recipe.write_text(generated_recipe(n))
            results.append(measure(recipe, f"{n:,} command stages", repeats=1 if n > 5000
                                   else 3))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
