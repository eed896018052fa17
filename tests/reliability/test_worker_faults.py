"""A stage that crashes or hangs fails alone, with its log; `--keep-going` builds the rest.

Two levels of crash: the step's command (a child of the stage worker) and the stage worker
itself (the command kills its parent, os.getppid()). Each failure is checked for its message,
its log, no record in the store, and no process left behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import Project, statuses
from tests.reliability.helpers import PY, processes_under, stored_records

# step name → (python code run by the step's command, words the stage's error must contain)
FAULTS = {
    "child_segfault": ("import ctypes; ctypes.string_at(0)", "status -11"),
    "child_abort": ("import os; os.abort()", "status -6"),
    "child_exit": ("import sys; sys.exit(7)", "status 7"),
    "child_ignores_sigterm_and_hangs": (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
        "timed out after 1 s"),
    "worker_segfault": ("import os, signal; os.kill(os.getppid(), signal.SIGSEGV)",
                        "worker killed by SIGSEGV"),
    "worker_abort": ("import os, signal; os.kill(os.getppid(), signal.SIGABRT)",
                     "worker killed by SIGABRT"),
    "worker_hangs": (  # the worker is stopped: only the recipe's timeout can end it
        "import os, signal, time; os.kill(os.getppid(), signal.SIGSTOP); time.sleep(120)",
        "timed out after 1 s"),
    "worker_killed": ("import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
                      "worker killed by SIGKILL"),
}
TIMEOUT_STEPS = {"child_ignores_sigterm_and_hangs", "worker_hangs"}


def recipe(broken: bool) -> str:
    lines = ["recipe: faults", "steps:"]
    good = "open('{out}', 'w').write('{name}')"
    for name, (code, _) in FAULTS.items():
        body = (f"print('before {name}', flush=True); {code}; " if broken else "") + \
            good.format(out=f"{name}.txt", name=name)
        lines += [f"  {name}:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(body)}]",
                  f"    outs: [{name}.txt]"]
        if name in TIMEOUT_STEPS:
            lines.append("    timeout: 1")
    lines += [
        "  ok_first:",
        f"    cmd: [{json.dumps(PY)}, \"-c\", \"open('a.txt', 'w').write('a')\"]",
        "    outs: [a.txt]",
        "  ok_second:",
        f"    cmd: [{json.dumps(PY)}, \"-c\", \"open('b.txt', 'w').write(open('a.txt').read())\"]",
        "    deps: [a.txt]",
        "    outs: [b.txt]",
        "  after_segfault:",
        f"    cmd: [{json.dumps(PY)}, \"-c\", \"open('c.txt', 'w').write('c')\"]",
        "    deps: [worker_segfault.txt]",
        "    outs: [c.txt]",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict, float]:
    project = Project(tmp_path_factory.mktemp("faults"))
    project.write("recipe.yaml", recipe(broken=True))
    started = time.monotonic()
    report = project.build("recipe.yaml", "--keep-going", "-j", "2", check=False)
    return project, report, time.monotonic() - started


def test_each_crash_fails_only_its_stage(crashed: tuple[Project, dict, float]) -> None:
    _, report, _ = crashed
    assert report["process"].returncode == 1
    failed = {s["id"]: s for s in report["stages"] if s["status"] == "failed"}
    assert set(failed) == {f"steps/{name}" for name in FAULTS}
    for name, (_, words) in FAULTS.items():
        assert words in failed[f"steps/{name}"]["error"], (name, failed[f"steps/{name}"])
    assert statuses(report, "built") == {"steps/ok_first", "steps/ok_second"}
    assert statuses(report, "skipped") == {"steps/after_segfault"}
    stderr = report["process"].stderr
    assert "error: steps/worker_segfault failed: worker killed by SIGSEGV" in stderr


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_failed_stage_keeps_its_log(crashed: tuple[Project, dict, float], name: str) -> None:
    project, report, _ = crashed
    stage = next(s for s in report["stages"] if s["id"] == f"steps/{name}")
    log = Path(stage["log"])
    assert log.is_relative_to(project.root / "build" / "faults" / "logs")
    assert f"before {name}" in log.read_text()


def test_nothing_recorded_for_failed_stages_and_nothing_left_running(
        crashed: tuple[Project, dict, float]) -> None:
    project, _, wall = crashed
    recorded = set(stored_records(project.cache))
    assert recorded == {"steps/ok_first", "steps/ok_second"}
    assert not any((project.root / "build" / "faults" / "steps" / name).exists() for name in FAULTS)
    assert processes_under(project.root) == []  # the hung steps' whole process groups died
    assert wall < 30  # the two 1 s timeouts did their job


def test_after_fixing_only_the_failed_stages_run(crashed: tuple[Project, dict, float]) -> None:
    project, _, _ = crashed
    project.write("recipe.yaml", recipe(broken=False))
    report = project.build("recipe.yaml", "-j", "2")
    assert statuses(report, "cached") == {"steps/ok_first", "steps/ok_second"}
    assert statuses(report, "built") == {f"steps/{n}" for n in FAULTS} | {"steps/after_segfault"}
    assert (project.root / "build/faults/steps/worker_hangs/worker_hangs.txt").read_text() == \
        "worker_hangs"


def test_lock_keeps_no_stale_entry_of_a_stage_that_failed(project: Project) -> None:
    """`down` fails after `up` was rebuilt: its old lock entry (made from `up`'s old output)
    must go, or the lock would describe two states of the project at once."""
    code_up = "open('up.txt', 'w').write(open('src.txt').read())"
    code_down = ("import sys; t = open('up.txt').read(); "
                 "sys.exit(5) if t == 'bad' else open('down.txt', 'w').write(t * 2)")
    project.write("recipe.yaml", "\n".join([
        "recipe: stale", "steps:",
        "  up:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code_up)}]",
        "    deps: [src.txt]", "    outs: [up.txt]",
        "  down:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code_down)}]",
        "    deps: [up.txt]", "    outs: [down.txt]",
        "  other:", f"    cmd: [{json.dumps(PY)}, \"-c\", \"open('o.txt', 'w').write('o')\"]",
        "    outs: [o.txt]"]) + "\n")
    project.write("src.txt", "good")
    project.build()
    from tests.reliability.helpers import lock_stages

    before = lock_stages(project.root)
    project.write("src.txt", "bad")
    report = project.build("recipe.yaml", check=False)
    assert statuses(report, "failed") == {"steps/down"}
    after = lock_stages(project.root)
    assert after["steps/up"] != before["steps/up"]  # rebuilt: recorded
    assert "steps/down" not in after  # failed: no entry rather than the stale one
    assert after["steps/other"] == before["steps/other"]  # untouched: kept


def test_timeout_from_settings_applies_to_steps(project: Project) -> None:
    """`settings.timeouts.command` is the default for every step (a step's own `timeout:`
    overrides it)."""
    hang = "import time; time.sleep(120)"
    project.write("recipe.yaml", "\n".join([
        "recipe: timeouts", "settings: {timeouts: {command: 1}}", "steps:",
        "  hang:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(hang)}]",
        "    outs: [h.txt]",
        "  patient:",
        f"    cmd: [{json.dumps(PY)}, \"-c\", \"import time; time.sleep(1.5); "
        "open('p.txt', 'w').write('p')\"]",
        "    outs: [p.txt]", "    timeout: 30"]) + "\n")
    started = time.monotonic()
    report = project.build("recipe.yaml", "-k", "-j", "2", check=False)
    assert time.monotonic() - started < 30
    failed = {s["id"]: s["error"] for s in report["stages"] if s["status"] == "failed"}
    assert list(failed) == ["steps/hang"] and "timed out after 1 s" in failed["steps/hang"]
    assert statuses(report, "built") == {"steps/patient"}
    assert processes_under(project.root) == []
