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
--change split the dataset's `calibration:` split, which also moves the validation split).
Both run with OMP_NUM_THREADS=1. Printed: the table, the stages each run ran and, for
modelbuild, each built stage's start and duration from its `--report` (cold and one-change
builds only: a report makes a build plan fully, which those do anyway; the no-ops run without
it so that the plan cache answers them).

DVC is not a modelbuild dependency; give it its own venv:

    python3 -m venv /tmp/dvc-venv && /tmp/dvc-venv/bin/pip install 'dvc==3.67.*'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/versus_dvc.py --dvc /tmp/dvc-venv/bin/dvc
        [--python .venv/bin/python] [--repeats 3] [--change samples|split]
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = Path(__file__).resolve().parent / "versus_dvc"
DVC_FILES = ("export.py", "prepare.py", "quantize.py", "validate.py", "params.yaml")
TARGET = "tiny/w8a8/onnx/host/validate"
# Each tool's calibration count, as (file, text before, text after) for the one change.
CHANGES = {
    "dvc": ("params.yaml", "calibration: 8", "calibration: 7"),
    "samples": ("recipe.yaml", "samples: 8", "samples: 7"),
    "split": ("recipe.yaml", "calibration: 8\n", "calibration: 7\n"),
}


@dataclass
class Run:
    seconds: float
    ran: list[str]                 # stages that ran, in the order the tool reported them
    summary: str = ""
    stages: list[dict[str, object]] = field(default_factory=list)  # modelbuild's report


@dataclass
class Measured:
    cold: Run
    noops: list[Run]
    change: Run
    psnr: object  # PSNR of w8a8 against fp32 after the change: both tools did the work


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


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


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise SystemExit(f"{path} has no {old!r} to change")
    path.write_text(text.replace(old, new, 1))


# --- DVC ---------------------------------------------------------------------------------


def dvc_version(dvc: str) -> str | None:
    try:
        result = subprocess.run([dvc, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def dvc_project(root: Path, dvc: str, python: str, env: dict[str, str]) -> Path:
    project = root / "dvc-project"
    project.mkdir()
    for name in DVC_FILES:
        shutil.copyfile(PROJECT / name, project / name)
    template = (PROJECT / "dvc.yaml").read_text()
    (project / "dvc.yaml").write_text(template.replace("{python}", shlex.quote(python)))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"],
                # Favour DVC: no usage analytics and no update check in the timings.
                [dvc, "config", "core.analytics", "false"],
                [dvc, "config", "core.check_update", "false"],
                ["git", "add", "-A"], [*git, "commit", "-qm", "the pipeline"]):
        timed(cmd, project, env)
    return project


def dvc_run(dvc: str, project: Path, env: dict[str, str]) -> Run:
    seconds, output = timed([dvc, "repro"], project, env)
    ran = re.findall(r"Running stage '([^']+)'", output)
    return Run(seconds, ran, summary=f"{len(ran)} stage(s) ran")


def measure_dvc(args: argparse.Namespace, root: Path) -> Measured:
    env = base_env({"DVC_NO_ANALYTICS": "1"})
    project = dvc_project(root, args.dvc, args.python, env)
    cold = dvc_run(args.dvc, project, env)
    noops = [dvc_run(args.dvc, project, env) for _ in range(args.repeats)]
    name, old, new = CHANGES["dvc"]
    edit(project / name, old, new)
    change = dvc_run(args.dvc, project, env)
    psnr = json.loads((project / "metrics.json").read_text())["psnr_db"]
    return Measured(cold, noops, change, psnr)


# --- modelbuild --------------------------------------------------------------------------


def modelbuild_run(args: argparse.Namespace, project: Path, env: dict[str, str],
                   report: bool) -> Run:
    cmd = [args.python, "-m", "buildsys", "recipe.yaml", TARGET]
    if report:
        cmd += ["--report", "report.json"]
    seconds, output = timed(cmd, project, env)
    summary = next((line.strip() for line in reversed(output.splitlines())
                    if " built, " in line), "")
    if not report:
        return Run(seconds, [], summary=summary)
    stages = json.loads((project / "report.json").read_text())["stages"]
    built = sorted((s for s in stages if s["status"] == "built"),
                   key=lambda s: float(s["started_s"]))
    return Run(seconds, [str(s["id"]) for s in built], summary=summary, stages=built)


def measure_modelbuild(args: argparse.Namespace, root: Path) -> Measured:
    env = base_env(dict(item.split("=", 1) for item in args.env))
    project = root / "modelbuild-project"
    project.mkdir()
    shutil.copyfile(PROJECT / "recipe.yaml", project / "recipe.yaml")
    (project / "pyproject.toml").write_text("")  # the project root: its store is .cache/ here
    cold = modelbuild_run(args, project, env, report=True)
    noops = [modelbuild_run(args, project, env, report=False) for _ in range(args.repeats)]
    name, old, new = CHANGES[args.change]
    edit(project / name, old, new)
    change = modelbuild_run(args, project, env, report=True)
    validation = project / "build" / "pipeline" / TARGET / "validation.json"
    psnr = _psnr(json.loads(validation.read_text()))
    return Measured(cold, noops, change, psnr)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc", default=shutil.which("dvc") or "/tmp/dvc-venv/bin/dvc",
                        help="the dvc executable (default: on PATH, else /tmp/dvc-venv)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for modelbuild and for DVC's stages")
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs (best is shown)")
    parser.add_argument("--change", choices=("samples", "split"), default="samples",
                        help="modelbuild's one change: the scheme's samples (default) or the "
                             "dataset's calibration split")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for modelbuild (e.g. MODELBUILD_ZYGOTE=0)")
    parser.add_argument("--skip-dvc", action="store_true", help="time modelbuild only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="versus-dvc-"))
    results: dict[str, Measured] = {}
    try:
        version = None if args.skip_dvc else dvc_version(args.dvc)
        if version:
            results[f"DVC {version}"] = measure_dvc(args, root)
        elif not args.skip_dvc:
            print(f"DVC is not available at {args.dvc} (install: python3 -m venv "
                  f"/tmp/dvc-venv && /tmp/dvc-venv/bin/pip install 'dvc==3.67.*'); "
                  f"timing modelbuild only")
        label = "modelbuild" + "".join(f" {item}" for item in args.env)
        results[label] = measure_modelbuild(args, root)
    finally:
        if args.keep:
            print(f"projects kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    change = {"samples": "recipe `samples:`", "split": "dataset split"}[args.change]
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (the machine is shared: "
          f"figures are under load)")
    print(f"\n| | cold | no-op (best of {args.repeats}) | one change (calibration 8 → 7; "
          f"modelbuild: {change}) | PSNR w8a8 vs fp32 |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        noops = [n.seconds for n in r.noops]
        print(f"| {label} | {r.cold.seconds:.2f} s | {min(noops):.2f} s "
              f"({', '.join(f'{n:.2f}' for n in noops)}) | {r.change.seconds:.2f} s | "
              f"{r.psnr} dB |")
    for label, r in results.items():
        print(f"\n{label} stages run: cold {r.cold.ran}; one change {r.change.ran}")
        if label.startswith("modelbuild"):
            show_stages("cold", r.cold)
            for i, n in enumerate(r.noops, 1):
                print(f"modelbuild, no-op {i}: {n.seconds:.2f} s; {n.summary}")
            print("  (the cold build ran with --report, which writes no plan-cache stamp: "
                  "the first no-op plans fully and stamps, the next are answered by the stamp)")
            show_stages("one change", r.change)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
