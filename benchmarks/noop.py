"""Cold build, no-op and one-change wall times: an example recipe, and generated recipes of
N independent `cp` command steps (DVC's benchmark shape). Also asserts that the no-op path
imports neither torch nor onnxruntime, and says whether it planned (networkx/jsonschema) or
was answered from the plan cache.

    python benchmarks/noop.py [--sizes 1000 10000] [--example recipes/tiny.yaml]
                              [--code DIR]      # another modelbuild source tree ("before")

Each no-op is timed twice: answered by the plan cache (the default) and fully planned
(MODELBUILD_PLAN_CACHE=0). Targets (issue 13, 2-core machine): no-op of 1,000 steps ≤ 0.5 s,
10,000 ≤ 3 s; the tiny example's no-op ≥ 5× faster than DVC's 1.74 s.
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
    "import sys\n"
    "from buildsys.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('torch', 'onnxruntime', 'aimet_torch', 'onnx') "
    "if m in sys.modules)\n"
    "planned = 'networkx' in sys.modules or 'jsonschema' in sys.modules\n"
    "print('HEAVY=' + ','.join(heavy) + ' PLANNED=' + str(planned), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def cp_recipe(directory: Path, n: int) -> Path:
    """n independent steps, each copying its own source file (a change touches one)."""
    (directory / "src").mkdir(parents=True, exist_ok=True)
    lines = ["recipe: copies", "steps:"]
    for i in range(n):
        (directory / "src" / f"{i}.txt").write_text(f"{i}\n")
        lines.append(f"  c{i}:\n    cmd: [cp, src/{i}.txt, o{i}.txt]\n    deps: [src/{i}.txt]\n"
                     f"    outs: [o{i}.txt]")
    (directory / "pyproject.toml").write_text("")  # the project root: store beside it
    recipe = directory / "recipe.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def run(code: Path, recipe: Path, env: dict[str, str] | None = None) -> tuple[float, str, bool]:
    full_env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("MODELBUILD_CACHE_DIR", None)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(recipe), "-q"],
                            cwd=recipe.parent, env=full_env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build of {recipe} failed:\n{result.stderr[-3000:]}")
    probe = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")][-1]
    heavy, planned = probe.removeprefix("HEAVY=").split(" PLANNED=")
    return elapsed, heavy, planned == "True"


def best(code: Path, recipe: Path, repeats: int, env: dict[str, str] | None = None
         ) -> tuple[float, str, bool]:
    runs = [run(code, recipe, env) for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


def measure(code: Path, recipe: Path, label: str, change: tuple[Path, str, str],
            repeats: int) -> dict[str, object]:
    cold, _, _ = run(code, recipe)
    noop, heavy, planned = best(code, recipe, repeats)
    full, _, _ = best(code, recipe, repeats, {"MODELBUILD_PLAN_CACHE": "0"})
    path, old, new = change
    text = path.read_text()
    assert old in text, f"{path} has no {old!r} to change"
    path.write_text(text.replace(old, new, 1))
    one_change, _, _ = run(code, recipe)
    print(f"{label:<24} cold {cold:7.2f} s   no-op {noop:6.3f} s "
          f"({'planned' if planned else 'plan cache'})   no-op fully planned {full:6.3f} s   "
          f"one change {one_change:6.2f} s   heavy imports on no-op: {heavy or 'none'}",
          flush=True)
    assert not heavy, f"no-op rebuild of {label} imported {heavy}"
    return {"label": label, "cold_s": round(cold, 3), "noop_s": round(noop, 3),
            "noop_planned": planned, "noop_full_plan_s": round(full, 3),
            "one_change_s": round(one_change, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--example", type=Path, default=REPO / "recipes" / "tiny.yaml",
                        help="an example recipe ('' for none)")
    parser.add_argument("--change", nargs=2, default=["calibration: 4", "calibration: 3"],
                        metavar=("OLD", "NEW"), help="the example's one change")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="the modelbuild source tree to measure (e.g. a checkout of main)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"modelbuild from {args.code}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.example and args.example.name:
            example_dir = Path(tmp) / "example"
            example_dir.mkdir()
            recipe = example_dir / args.example.name
            recipe.write_text(args.example.read_text())
            (example_dir / "pyproject.toml").write_text("")
            results.append(measure(args.code, recipe, f"example ({args.example.name})",
                                   (recipe, *args.change), args.repeats))
        for n in args.sizes:
            recipe = cp_recipe(Path(tmp) / f"cp{n}", n)
            source = recipe.parent / "src" / f"{n // 2}.txt"
            results.append(measure(args.code, recipe, f"{n:,} cp steps",
                                   (source, f"{n // 2}\n", "changed\n"),
                                   1 if n > 5000 else args.repeats))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
