"""SIGKILL of the whole `modelbuild` process group mid-build: the next run finishes the build,
reuses every stage that had completed, gives the reference artifacts and lock, and the store
passes `cache verify`. (benchmarks/faults.py runs the same check over 50+ kill points.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Project, statuses
from tests.reliability.helpers import (
    PY,
    Reference,
    chain_recipe,
    kill_and_recover,
    kill_group,
    kill_schedule,
    processes_under,
    reference_build,
    start_build,
    stored_records,
    wait_no_processes_under,
)

STEPS = 10
RECIPE = chain_recipe(STEPS, sleep=0.15, seed=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return reference_build(tmp_path_factory.mktemp("reference"), RECIPE, "-j", "2")


@pytest.mark.parametrize("index", range(5))
def test_sigkill_at_a_random_point_then_resume(reference: Reference, tmp_path: Path,
                                               index: int) -> None:
    delay = kill_schedule(5, reference.wall_s, seed=20240611)[index]
    point = kill_and_recover(tmp_path, RECIPE, delay, reference, "-j", "2")
    assert point.recovered, point.problems
    assert point.wrong == [], (delay, point.wrong)
    assert point.problems == [], (delay, point.problems)
    # a resumed build runs exactly the stages that had not completed
    assert point.rerun_built == {f"steps/s{i}" for i in range(STEPS)} - point.completed_before


def test_kill_after_some_stages_completed_reuses_them(reference: Reference,
                                                      tmp_path: Path) -> None:
    """A kill point chosen on evidence, not time: once some stages are recorded."""
    project = Project(tmp_path)
    project.write("recipe.yaml", RECIPE)
    process = start_build(tmp_path, "-j", "2")
    deadline = time.monotonic() + 60
    while len(done := _records_or_empty(tmp_path)) < 3:
        assert time.monotonic() < deadline and process.poll() is None, "build did not progress"
        time.sleep(0.05)
    kill_group(process)
    assert wait_no_processes_under(tmp_path) == []
    done = _records_or_empty(tmp_path)
    report = project.build("recipe.yaml", "-j", "2")
    assert done and done <= statuses(report, "cached")
    assert statuses(report, "built") == {f"steps/s{i}" for i in range(STEPS)} - done


def _records_or_empty(root: Path) -> set[str]:
    if not (root / ".cache" / "index").exists():
        return set()
    try:
        return set(stored_records(root / ".cache"))
    except Exception:  # the index is being created by the build at this very moment
        return set()


def test_killing_the_coordinator_alone_ends_its_workers(tmp_path: Path) -> None:
    """Workers run in their own sessions (a crash must not take the coordinator down), so a
    SIGKILL of the coordinator's group does not reach them: they must notice and end, with
    the commands they started, instead of running on unsupervised (no timeout any more)."""
    pid_file = tmp_path / "step.pid"
    project = Project(tmp_path)
    project.write("recipe.yaml", f"""\
        recipe: orphan
        steps:
          hang:
            cmd: ["{PY}", "-c", "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"]
            outs: [never.txt]
        """)  # noqa: E501
    process = start_build(tmp_path)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    step_pid = int(pid_file.read_text())
    os.kill(process.pid, signal.SIGKILL)  # the coordinator only, not even its group
    process.communicate(timeout=30)
    left = wait_no_processes_under(tmp_path, timeout=10)
    for pid in left:  # do not leave them behind whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert left == [], "workers outlived the coordinator"
    assert not Path(f"/proc/{step_pid}").exists() or _is_zombie(step_pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_leaves_no_half_written_files_that_the_next_run_trusts(
        reference: Reference, tmp_path: Path) -> None:
    """Kill repeatedly at short intervals (the same project each time): the fifth run on the
    debris of four killed ones still ends with the reference artifacts."""
    project = Project(tmp_path)
    project.write("recipe.yaml", RECIPE)
    for delay in (0.4, 0.7, 1.0, 1.3):
        process = start_build(tmp_path, "-j", "2")
        time.sleep(delay)
        kill_group(process)
        assert wait_no_processes_under(tmp_path) == []
    report = project.build("recipe.yaml", "-j", "2")
    assert report["ok"]
    from tests.reliability.helpers import cache_verify, file_digests, lock_stages

    assert file_digests(tmp_path) == reference.artifacts
    assert lock_stages(tmp_path) == reference.lock
    assert cache_verify(tmp_path).returncode == 0
    assert processes_under(tmp_path) == []
