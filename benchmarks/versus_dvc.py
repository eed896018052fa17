"""modelbuild against DVC on the same small pipeline (issue 13): cold, no-op and one change.

The pipeline: the tiny conv net (`buildsys.zoo.tiny:tiny_convnet`) → fp32 ONNX → onnxruntime
QDQ w8a8 calibrated on 8 of scikit-image's bundled photos → both models run with ONNX Runtime
on the host CPU over 2 more photos, PSNR of the quantized outputs against fp32 (≥ 20 dB).
Written twice, in `benchmarks/versus_dvc/`:

- a DVC project (`dvc.yaml`, `params.yaml` with `calibration: 8`, one `python script.py`
  process per stage: export, calibration, validation, quantize, validate), run by
  `dvc repro` with the stage interpreter given by --python (the same torch, onnx, onnxruntime
  as modelbuild's);
- a modelbuild recipe (`recipe.yaml`), built as `python -m buildsys recipe.yaml
  'tiny/w8a8/onnx/host/validate'` (that stage and what it needs: no profile, package or
  release index) with the default -j.

Each tool gets its own fresh temporary project (empty caches), then: cold; no-op (best of
--repeats); one change, the calibration count 8 → 7 in each tool's natural place
(`params.yaml` for DVC; the quantization scheme's `samples:` in the recipe, or with
--change split the dataset's `calibration:` split, which also moves the validation split);
with --trials N, N − 1 more changes (7 → 6, 6 → 5, …) and their median, since one timing on
a shared machine is noisy. The tools take turns in every phase (DVC, then modelbuild) so that
both see the same load. Both run with OMP_NUM_THREADS=1. Printed: the table, the stages each
run ran and, for modelbuild, each built stage's start and duration from its `--report` (cold
and change builds only: a report makes a build plan fully, which those do anyway; the no-ops
run without it so that the plan cache answers them).

DVC is not a modelbuild dependency; give it its own venv:

    python3 -m venv /tmp/dvc-venv && /tmp/dvc-venv/bin/pip install 'dvc==3.67.*'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/versus_dvc.py --dvc /tmp/dvc-venv/bin/dvc
        [--python .venv/bin/python] [--repeats 3] [--trials 1] [--change samples|split]
        [--env MODELBUILD_ZYGOTE=0] [--keep]

Targets (issue 13): modelbuild's cold and one-change faster than DVC's, its no-op ≥ 5× faster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from buildsys.backends.ort_runtime import host_cpu  # noqa: E402  (numpy only)

PROJECT = Path(__file__).resolve().parent / "versus_dvc"
DVC_FILES = ("export.py", "prepare.py", "quantize.py", "validate.py", "params.yaml")
TARGET = "tiny/w8a8/onnx/host/validate"
# Where each tool keeps the calibration count: (file, a pattern whose group 1 is the count).
COUNTS = {
    "dvc": ("params.yaml", r"^calibration: (\d+)$"),
    "samples": ("recipe.yaml", r"samples: (\d+)"),
    "split": ("recipe.yaml", r"^    calibration: (\d+)$"),
}


@dataclass
class Run:
    seconds: float
    ran: list[str]                 # stages that ran, in the order the tool reported them
    summary: str = ""
    stages: list[dict[str, object]] = field(default_factory=list)  # modelbuild's report


@dataclass
class Measured:
    cold: Run | None = None
    noops: list[Run] = field(default_factory=list)
    changes: list[Run] = field(default_factory=list)  # 8 → 7 first, then 7 → 6, …
    psnr: object = None  # PSNR of w8a8 against fp32 at the end: both tools did the work


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    # Nothing from the caller's shell may point either tool at a warm or shared cache.
    for name in ("MODELBUILD_CACHE_DIR", "MODELBUILD_REMOTE", "MODELBUILD_SCHEDULER"):
        env.pop(name, None)
    return env


def timed(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed in {cwd} (exit {result.returncode}):\n"
                         f"{output[-4000:]}")
    return elapsed, output


def set_count(project: Path, where: tuple[str, str], count: int) -> None:
    """Edit the calibration count in place, as a user would."""
    name, pattern = where
    path = project / name
    text, found = re.subn(pattern, lambda m: m.group(0).replace(m.group(1), str(count)),
                          path.read_text(), count=1, flags=re.MULTILINE)
    if not found:
        raise SystemExit(f"{path} has no calibration count matching {pattern!r}")
    path.write_text(text)


# --- DVC ---------------------------------------------------------------------------------


def dvc_version(dvc: str) -> str | None:
    try:
        result = subprocess.run([dvc, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


class Dvc:
    """The DVC project: `dvc repro` after `git init` + `dvc init`."""

    def __init__(self, args: argparse.Namespace, root: Path, version: str) -> None:
        self.label = f"DVC {version}"
        self.dvc = args.dvc
        self.count = COUNTS["dvc"]
        self.env = base_env({"DVC_NO_ANALYTICS": "1"})
        self.project = root / "dvc-project"
        self.project.mkdir()
        for name in DVC_FILES:
            shutil.copyfile(PROJECT / name, self.project / name)
        template = (PROJECT / "dvc.yaml").read_text()
        (self.project / "dvc.yaml").write_text(
            template.replace("{python}", shlex.quote(args.python)))
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        for cmd in (["git", "init", "-q"], [self.dvc, "init", "-q"],
                    # Favour DVC: no usage analytics and no update check in the timings.
                    [self.dvc, "config", "core.analytics", "false"],
                    [self.dvc, "config", "core.check_update", "false"],
                    ["git", "add", "-A"], [*git, "commit", "-qm", "the pipeline"]):
            timed(cmd, self.project, self.env)

    def build(self, report: bool) -> Run:
        seconds, output = timed([self.dvc, "repro"], self.project, self.env)
        ran = re.findall(r"Running stage '([^']+)'", output)
        return Run(seconds, ran, summary=f"{len(ran)} stage(s) ran")

    def psnr(self) -> object:
        return json.loads((self.project / "metrics.json").read_text())["psnr_db"]


# --- modelbuild --------------------------------------------------------------------------


class Modelbuild:
    """The modelbuild project: `python -m buildsys recipe.yaml TARGET` (default -j)."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.label = "modelbuild" + "".join(f" {item}" for item in args.env)
        self.python = args.python
        self.count = COUNTS[args.change]
        self.env = base_env(dict(item.split("=", 1) for item in args.env))
        self.project = root / "modelbuild-project"
        self.project.mkdir()
        recipe = (PROJECT / "recipe.yaml").read_text()
        if args.change == "split":  # the scheme calibrates on the whole split, whatever its size
            recipe = re.sub(r",\s*samples: \d+", "", recipe)
        (self.project / "recipe.yaml").write_text(recipe)
        # The project root: its store is .cache/ here.
        (self.project / "pyproject.toml").write_text("")

    def build(self, report: bool) -> Run:
        cmd = [self.python, "-m", "buildsys", "recipe.yaml", TARGET]
        if report:
            cmd += ["--report", "report.json"]
        seconds, output = timed(cmd, self.project, self.env)
        summary = next((line.strip() for line in reversed(output.splitlines())
                        if " built, " in line), "")
        if not report:
            return Run(seconds, [], summary=summary)
        stages = json.loads((self.project / "report.json").read_text())["stages"]
        built = sorted((s for s in stages if s["status"] == "built"),
                       key=lambda s: float(s["started_s"]))
        return Run(seconds, [str(s["id"]) for s in built], summary=summary, stages=built)

    def psnr(self) -> object:
        validation = self.project / "build" / "pipeline" / TARGET / "validation.json"
        return _psnr(json.loads(validation.read_text()))


def _psnr(validation: object) -> object:
    """The first PSNR figure in modelbuild's validation.json (its layout is the stage's)."""
    if isinstance(validation, dict):
        for key, value in validation.items():
            if "psnr" in key.lower() and isinstance(value, int | float):
                return round(value, 2)
        for value in validation.values():
            found = _psnr(value)
            if found is not None:
                return found
    if isinstance(validation, list):
        for value in validation:
            found = _psnr(value)
            if found is not None:
                return found
    return None


def measure(args: argparse.Namespace, tools: list[Dvc | Modelbuild]) -> dict[str, Measured]:
    """Every phase for every tool, the tools taking turns."""
    results = {tool.label: Measured() for tool in tools}
    for tool in tools:
        results[tool.label].cold = tool.build(report=True)
    for _ in range(args.repeats):
        for tool in tools:
            results[tool.label].noops.append(tool.build(report=False))
    for count in range(7, 7 - args.trials, -1):
        for tool in tools:
            set_count(tool.project, tool.count, count)
            results[tool.label].changes.append(tool.build(report=True))
    for tool in tools:
        results[tool.label].psnr = tool.psnr()
    return results


# --- output ------------------------------------------------------------------------------


def show_stages(phase: str, run: Run) -> None:
    print(f"\nmodelbuild, {phase}: {run.seconds:.2f} s wall; {run.summary}")
    if not run.stages:
        return
    print(f"  {'stage':34} {'start s':>8} {'took s':>7}")
    for stage in run.stages:
        print(f"  {stage['id']!s:34} {float(stage['started_s']):8.2f} "
              f"{float(stage['duration_s']):7.2f}")
    ends = [float(s["started_s"]) + float(s["duration_s"]) for s in run.stages]
    total = sum(float(s["duration_s"]) for s in run.stages)
    first = min(float(s["started_s"]) for s in run.stages)
    print(f"  stage time {total:.2f} s; stages ran from {first:.2f} to {max(ends):.2f} s of "
          f"the build's clock; the rest of the {run.seconds:.2f} s is start-up, planning, "
          f"lock/report and exit")


def show(args: argparse.Namespace, results: dict[str, Measured]) -> None:
    change = {"samples": "recipe `samples:`", "split": "dataset split"}[args.change]
    trials = f"; median of {args.trials} changes 8 → 7 … → {8 - args.trials}" \
        if args.trials > 1 else ""
    print(f"\n| | cold | no-op (best of {args.repeats}) | one change (calibration 8 → 7; "
          f"modelbuild: {change}{trials}) | PSNR w8a8 vs fp32 |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        assert r.cold is not None
        noops = [n.seconds for n in r.noops]
        changes = [c.seconds for c in r.changes]
        first = f"{changes[0]:.2f} s"
        if len(changes) > 1:
            first = (f"{changes[0]:.2f} s; median {statistics.median(changes):.2f} s "
                     f"({', '.join(f'{c:.2f}' for c in changes)})")
        print(f"| {label} | {r.cold.seconds:.2f} s | {min(noops):.2f} s "
              f"({', '.join(f'{n:.2f}' for n in noops)}) | {first} | {r.psnr} dB |")
    for label, r in results.items():
        assert r.cold is not None
        print(f"\n{label} stages run: cold {r.cold.ran}; "
              f"changes {[len(c.ran) for c in r.changes]} stages; 8 → 7 {r.changes[0].ran}")
        if label.startswith("modelbuild"):
            show_stages("cold", r.cold)
            for i, n in enumerate(r.noops, 1):
                print(f"modelbuild, no-op {i}: {n.seconds:.2f} s; {n.summary}")
            print("  (the cold build ran with --report, which writes no plan-cache stamp: "
                  "the first no-op plans fully and stamps, the next are answered by the stamp)")
            for i, run in enumerate(r.changes):
                show_stages(f"change {8 - i} → {7 - i}", run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc", default=shutil.which("dvc") or "/tmp/dvc-venv/bin/dvc",
                        help="the dvc executable (default: on PATH, else /tmp/dvc-venv)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for modelbuild and for DVC's stages")
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs (best is shown)")
    parser.add_argument("--trials", type=int, default=1, choices=range(1, 8),
                        help="one-change runs: 8 → 7, then 7 → 6, … (median shown)")
    parser.add_argument("--change", choices=("samples", "split"), default="samples",
                        help="modelbuild's one change: the scheme's samples (default) or the "
                             "dataset's calibration split")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for modelbuild (e.g. MODELBUILD_ZYGOTE=0)")
    parser.add_argument("--skip-dvc", action="store_true", help="time modelbuild only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)

    print(f"CPU: {host_cpu()} ({os.cpu_count()} logical cores); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="versus-dvc-"))
    try:
        tools: list[Dvc | Modelbuild] = []
        version = None if args.skip_dvc else dvc_version(args.dvc)
        if version:
            tools.append(Dvc(args, root, version))
        elif not args.skip_dvc:
            print(f"DVC is not available at {args.dvc} (install: python3 -m venv "
                  f"/tmp/dvc-venv && /tmp/dvc-venv/bin/pip install 'dvc==3.67.*'); "
                  f"timing modelbuild only")
        tools.append(Modelbuild(args, root))
        results = measure(args, tools)
    finally:
        if args.keep:
            print(f"projects kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at end {os.getloadavg()[0]:.2f} (the machine is shared: "
          f"figures are under load)")
    show(args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
