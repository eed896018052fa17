"""Warm workers (execute/zygote.py): every stage still runs in a process of its own — forked
from a zygote that imported the heavy libraries once — with its own group, scratch directory
and log; a crash fails only its stage; the zygote ends with its build.

Real builds through the CLI, real forks, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from buildsys.execute.zygote import ML, Zygote, ZygoteGone, preload_for
from tests.conftest import REPO, Project, statuses
from tests.reliability.helpers import processes_under, wait_no_processes_under

PY = sys.executable
# What the worker process of a command step is: its pid, group and parent (the zygote), and
# where it runs. `os.getppid()` of the command is the worker.
WHO = ("import os; w = os.getppid(); st = open(f'/proc/{w}/stat').read().rsplit(')', 1)[1]; "
       "z = st.split()[1]; zygote = b'buildsys.execute.zygote' in open(f'/proc/{z}/cmdline', "
       "'rb').read(); print(w, os.getpgid(w), z, os.path.realpath(f'/proc/{w}/cwd'), zygote, "
       "file=open(os.environ['OUT'], 'w'))")


def steps_recipe(n: int) -> str:
    lines = ["recipe: warm", "steps:"]
    for i in range(n):
        lines.append(f"  s{i}:\n    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(WHO)}]"
                     f"\n    env: {{OUT: who{i}.txt}}\n    outs: [who{i}.txt]")
    return "\n".join(lines) + "\n"


def test_each_stage_is_a_fresh_child_of_one_zygote_in_its_own_group_and_scratch(
        project: Project) -> None:
    project.write("recipe.yaml", steps_recipe(6))
    report = project.build("recipe.yaml", "-j", "2")
    assert len(statuses(report, "built")) == 6
    rows = [(project.root / f"build/warm/steps/s{i}/who{i}.txt").read_text().split()
            for i in range(6)]
    workers = {int(r[0]) for r in rows}
    assert len(workers) == 6, "two stages shared a worker process"
    assert all(int(pid) == int(group) for pid, group, *_ in rows), "not its own group"
    parents = {int(r[2]) for r in rows}
    assert len(parents) == 1, f"stages were not forked from one zygote: {parents}"
    assert {r[4] for r in rows} == {"True"}
    scratches = {r[3] for r in rows}
    assert len(scratches) == 6 and all("/.cache/tmp/work/" in s for s in scratches)
    (zygote,) = parents
    assert not Path(f"/proc/{zygote}").exists(), "the zygote outlived its build"


def test_without_zygote_each_stage_is_a_fresh_interpreter(project: Project) -> None:
    project.write("recipe.yaml", steps_recipe(2))
    project.build("recipe.yaml", env={"MODELBUILD_ZYGOTE": "0"})
    rows = [(project.root / f"build/warm/steps/s{i}/who{i}.txt").read_text().split()
            for i in range(2)]
    assert len({r[0] for r in rows}) == 2
    assert {r[4] for r in rows} == {"False"}  # children of the coordinator itself


SEGFAULT_DATA = """\
import ctypes
import sys

import numpy as np


def crash():
    ctypes.string_at(0)  # a segfault in native code, inside the worker process


def ok():
    # 1.0 when the process came warm from a zygote, which preloads every stage module
    # (a fresh worker of a dataset stage never imports the export stage's)
    warm = float("buildsys.stages.export" in sys.modules)
    return [np.full((1, 3, 8, 8), warm, dtype=np.float32) for _ in range(2)]
"""

DATA_RECIPE = """\
recipe: warm
models:
  tiny:
    source: {python: "buildsys.zoo.tiny:tiny_convnet"}
    inputs: {x: {shape: [1, 3, 8, 8]}}
datasets:
  bad: {python: "mydata:crash", calibration: 1, validation: 1}
  good: {python: "mydata:ok", calibration: 1, validation: 1}
quantization:
  a: {engine: onnxruntime, weights: int8, activations: int8, calibration: bad}
  b: {engine: onnxruntime, weights: int8, activations: int8, calibration: good}
targets: {onnx: {runtime: onnx}}
devices: {host: {backend: host}}
builds:
  - {model: tiny, quantization: [a, b], target: onnx, device: host}
"""


def test_a_segfault_fails_only_its_stage_and_the_zygote_serves_on(project: Project) -> None:
    project.write("mydata.py", SEGFAULT_DATA)
    project.write("recipe.yaml", DATA_RECIPE)
    report = project.build("recipe.yaml", "data/*", "-k", "-j", "1", check=False)
    failed = {s["id"]: s for s in report["stages"] if s["status"] == "failed"}
    assert set(failed) == {"data/bad/calibration@tiny"}
    assert "SIGSEGV" in failed["data/bad/calibration@tiny"]["error"]
    built = statuses(report, "built")
    assert "data/good/calibration@tiny" in built  # ran after the crash, same zygote
    samples = np.load(project.root / "build/warm/data/good/calibration@tiny/samples.npz")
    assert all(float(samples[k].max()) == 1.0 for k in samples.files), \
        "the stage was not forked from a warm zygote"


def test_a_zygote_with_a_thread_refuses_to_fork(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that starts a thread when imported (onnxruntime does on some CPUs, not on
    others) makes forking unsafe, so the zygote says so and the runner starts a fresh
    interpreter instead (ZygoteGone). The module here starts its thread on every machine."""
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    zygote = Zygote(("starts_a_thread",), 1)
    try:
        (tmp_path / "job.json").write_text("{}")
        with pytest.raises(ZygoteGone, match="threads"):
            zygote.run(tmp_path / "job.json", tmp_path / "log.txt", tmp_path, 30,
                       lambda pid: None)
    finally:
        zygote.close()
    assert zygote.process.returncode == 0


def test_preloads_follow_what_a_stage_imports() -> None:
    assert preload_for(["python"]) == ()
    assert preload_for(["numpy", "pillow"]) == ("numpy",)
    assert preload_for(["onnx", "onnxruntime"]) == ML
    assert "aimet_torch" in preload_for(["torch", "aimet-torch"])
    assert "onnxruntime" not in preload_for(["torch", "onnxruntime", "aimet-torch"])


def test_sigkill_of_the_build_ends_the_zygote_and_its_children(tmp_path: Path) -> None:
    project = Project(tmp_path)
    marker = tmp_path / "started"
    project.write("recipe.yaml", f"""\
        recipe: warm
        steps:
          hang:
            cmd: ["{PY}", "-c", "import time; open({str(marker)!r}, 'w').close(); time.sleep(120)"]
            outs: [never.txt]
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([PY, "-m", "buildsys", "recipe.yaml", "-q"], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    zygotes = [pid for pid in processes_under(tmp_path)
               if b"buildsys.execute.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert zygotes, "no zygote ran the stage"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    left = wait_no_processes_under(tmp_path, timeout=10)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the zygote or its child outlived the build"
    assert not list((tmp_path / ".cache").glob("plan-cache/*.json"))


def test_a_stage_forked_from_the_ml_zygote_has_torch_loaded_already(tmp_path: Path) -> None:
    """The point of it: the worker of a torch stage starts with torch in memory (its mapped
    libraries, looked at by the command the worker runs), having imported nothing."""
    job = {"stage_id": "probe", "kind": "command", "inputs": {}, "tools": {}, "threads": 1,
           "cpus": None, "extras": {},
           "params": {"cmd": ["sh", "-c", "grep -c libtorch_cpu /proc/$PPID/maps > n.txt"],
                      "outs": ["n.txt"]}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    zygote = Zygote(ML)
    try:
        pids: list[int] = []
        code, timed_out = zygote.run(tmp_path / "job.json", tmp_path / "log.txt", tmp_path,
                                     300, pids.append)
    finally:
        zygote.close()
    assert (code, timed_out) == (0, False), (tmp_path / "log.txt").read_text()
    assert int((tmp_path / "out" / "n.txt").read_text()) > 0
    assert pids and pids[0] != zygote.process.pid
    assert json.loads((tmp_path / "result.json").read_text())["ok"] is True
