"""Stages on a real Dask cluster (scheduler and worker processes on 127.0.0.1) with the real
SeaweedFS remote cache between them; every build is the real CLI in a subprocess.

Command-step recipes keep the fault tests to seconds; one test builds part of the tiny torch
pipeline (float and w8a8, host and HTP simulator) and compares it with the committed lock,
which a local build made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LIKE_A_TERMINAL, REPO, Project, statuses
from tests.distributed.conftest import (
    PLAIN_WORKER,
    SIM_WORKER,
    DaskCluster,
    cluster_env,
    kill_group,
    start_scheduler,
    start_worker,
    wait_for_workers,
)
from tests.remote.conftest import SECRET_KEY, SeaweedServer

PY = sys.executable


def slow_recipe(marker: Path, seconds: float) -> str:
    """a → b → slow → after. `slow` appends its pid to `marker` when it starts (once per
    attempt), then sleeps: the moment to kill something."""
    def step(name: str, code: str, deps: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"cmd": [PY, "-c", code], "outs": [f"{name}.txt"]}
        if deps:
            entry["deps"] = deps
        return entry

    copy = "open('{out}', 'w').write(''.join(open(d).read() for d in {deps!r}) + '{out}')"
    slow_code = (f"import os, time; open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n'); "
                 f"time.sleep({seconds}); " + copy.format(out="slow.txt", deps=["b.txt"]))
    steps = {
        "a": step("a", copy.format(out="a.txt", deps=[]), []),
        "b": step("b", copy.format(out="b.txt", deps=["a.txt"]), ["a.txt"]),
        "slow": step("slow", slow_code, ["b.txt"]),
        "after": step("after", copy.format(out="after.txt", deps=["slow.txt"]), ["slow.txt"]),
    }
    return yaml.safe_dump({"recipe": "slow", "steps": steps}, sort_keys=False)


def start_build(project: Project, *args: str) -> subprocess.Popen[str]:
    report = project.root / "report.json"
    report.unlink(missing_ok=True)
    # (started as a terminal starts it: the Ctrl-C test sends it SIGINT)
    return subprocess.Popen([PY, "-c", LIKE_A_TERMINAL, "-m", "buildsys", "recipe.yaml",
                             "--report", str(report), *args], cwd=project.root,
                            env=cluster_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for_lines(marker: Path, count: int, process: subprocess.Popen[str],
                   timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = marker.read_text().split() if marker.exists() else []
        if len(lines) >= count:
            return [int(p) for p in lines]
        if process.poll() is not None:
            raise AssertionError(f"build ended first:\n{process.communicate()[1]}")
        time.sleep(0.05)
    raise AssertionError(f"{marker} did not get {count} line(s) in {timeout} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of an ended process counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def gone_soon(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def report_of(project: Project) -> dict[str, Any]:
    return json.loads((project.root / "report.json").read_text())


def test_tiny_on_the_cluster_gives_the_local_lock(tmp_path: Path, dask_cluster: DaskCluster,
                                                  seaweed: SeaweedServer) -> None:
    """The float variants of the tiny recipe (host and simulator) built on the cluster: every
    output (ONNX files, QNN context binaries, release archives) has the digest the committed
    lock (a local build) records, and the stage keys are the same; the simulator's stages ran
    only on the worker that advertises it; the report names each stage's worker."""
    project = Project(tmp_path)
    (tmp_path / "modelbuild.toml").write_text("")
    shutil.copy(REPO / "recipes" / "tiny.yaml", tmp_path / "tiny.yaml")
    patterns = ["tiny/float/*"]
    report = project.build("tiny.yaml", *patterns, "--scheduler", dask_cluster.address,
                           "--remote", seaweed.url("tiny"), env=cluster_env())
    built = {s["id"]: s for s in report["stages"] if s["status"] == "built"}
    assert len(built) == len(report["stages"]) > 10
    committed = yaml.safe_load((REPO / "recipes" / "tiny.lock").read_text())["stages"]
    made = yaml.safe_load((tmp_path / "tiny.lock").read_text())["stages"]
    for stage_id, entry in made.items():
        assert entry == committed[stage_id], stage_id
    assert any(s.endswith("/package") for s in made)
    archives = sorted((tmp_path / "release" / "tiny").glob("*.tar.gz"))
    assert len(archives) == 2

    on_sim = {s: e["worker"] for s, e in built.items() if "sm8550-sim/infer" in s}
    assert len(on_sim) == 1 and set(on_sim.values()) == {SIM_WORKER}
    assert {e["worker"] for e in built.values()} <= {SIM_WORKER, PLAIN_WORKER}
    assert "on sim" in report["process"].stderr
    # the secret went to the workers through their environment, never into the build's files
    for path in [tmp_path / "report.json", tmp_path / "tiny.lock"]:
        assert SECRET_KEY not in path.read_text()


def test_worker_killed_mid_stage_the_stage_runs_elsewhere(
        tmp_path: Path, dask_cluster: DaskCluster, seaweed: SeaweedServer) -> None:
    project = Project(tmp_path)
    marker = tmp_path / "attempts"
    project.write("recipe.yaml", slow_recipe(marker, 4))
    build = start_build(project, "--scheduler", dask_cluster.address,
                        "--remote", seaweed.url("killed-worker"))
    first = wait_for_lines(marker, 1, build)[0]
    with dask_cluster.client() as client:
        running = {str(k): a for a, keys in client.processing().items() for k in keys}
        address = next(a for k, a in running.items() if k.startswith("steps/slow#"))
        worker_pid = client.run(os.getpid, workers=[address])[address]
    os.kill(worker_pid, signal.SIGKILL)
    _, err = build.communicate(timeout=120)
    assert build.returncode == 0, err
    attempts = [int(p) for p in marker.read_text().split()]
    assert len(attempts) == 2 and attempts[0] == first
    assert gone_soon(first), "the killed worker's stage process lives on"
    report = report_of(project)
    assert statuses(report, "built") == {"steps/a", "steps/b", "steps/slow", "steps/after"}
    assert (tmp_path / "build" / "slow" / "steps" / "after" / "after.txt").read_text() == \
        "a.txtb.txtslow.txtafter.txt"
    # the nanny brings the worker back (the session's later tests use it)
    wait_for_workers(dask_cluster.address, {PLAIN_WORKER, SIM_WORKER})


def test_ctrl_c_cancels_the_builds_tasks(tmp_path: Path, dask_cluster: DaskCluster,
                                         seaweed: SeaweedServer) -> None:
    project = Project(tmp_path)
    marker = tmp_path / "attempts"
    project.write("recipe.yaml", slow_recipe(marker, 60))
    build = start_build(project, "--scheduler", dask_cluster.address,
                        "--remote", seaweed.url("ctrl-c"))
    stage_pid = wait_for_lines(marker, 1, build)[0]
    started = time.monotonic()
    os.killpg(build.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = build.communicate(timeout=60)
    assert build.returncode == 130, err
    assert "interrupted" in err
    assert gone_soon(stage_pid), "the stage's process still runs on the worker"
    assert time.monotonic() - started < 30
    with dask_cluster.client() as client:
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values())
    # what finished is kept: the re-run (fast this time) starts at the slow step
    project.write("recipe.yaml", slow_recipe(marker, 0))
    report = project.build("recipe.yaml", "--scheduler", dask_cluster.address,
                           "--remote", seaweed.url("ctrl-c"), env=cluster_env())
    assert statuses(report, "built") == {"steps/slow", "steps/after"}


def _sitecustomize_faking(directory: Path, distribution: str, version: str) -> Path:
    """A directory whose sitecustomize makes this Python report another installed version
    of one distribution: a worker whose environment really differs (to importlib.metadata,
    which is where modelbuild reads tool versions), without installing another wheel."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import importlib.metadata as _m\n"
        "_real = _m.version\n"
        f"def version(name):\n"
        f"    return {version!r} if name.lower() == {distribution!r} else _real(name)\n"
        "_m.version = version\n")
    return directory


@pytest.fixture(scope="module")
def odd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A scheduler of its own (the last test here kills it) and one worker whose environment
    really differs: its importlib.metadata reports pillow 0.0.1 (a sitecustomize on its
    PYTHONPATH, inherited by the stage processes it starts), without installing another
    wheel. Yields the address and the scheduler process."""
    directory = tmp_path_factory.mktemp("odd-cluster")
    site = directory / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.metadata as _m\n"
        "_real = _m.version\n"
        "def version(name):\n"
        "    return '0.0.1' if name.lower() == 'pillow' else _real(name)\n"
        "_m.version = version\n")
    address, scheduler = start_scheduler(directory)
    worker = start_worker(address, directory, "odd",
                          env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}"})
    try:
        wait_for_workers(address, {"odd"})
        yield address, scheduler
    finally:
        kill_group(worker)
        kill_group(scheduler)


def test_worker_with_other_tool_versions_refuses_the_stage(
        tmp_path: Path, odd_cluster: tuple[str, Any], seaweed: SeaweedServer) -> None:
    """The dataset stage's key promises this machine's pillow; the cluster's only worker has
    another: it refuses the stage, naming the tool and both versions, and nothing is stored
    under the key. --plan of a simulator stage says no worker of this cluster could run it."""
    from importlib.metadata import version

    address, _ = odd_cluster
    project = Project(tmp_path)
    project.write("modelbuild.toml", "")
    shutil.copy(REPO / "recipes" / "tiny.yaml", project.root / "tiny.yaml")
    report = project.build("tiny.yaml", "data/photos/calibration@tiny", "--scheduler", address,
                           "--remote", seaweed.url("odd"), check=False, env=cluster_env())
    assert report["process"].returncode == 1
    (entry,) = report["stages"]
    assert entry["status"] == "failed"
    assert f"this worker has pillow 0.0.1, but the stage's key promises pillow " \
           f"{version('pillow')}: it refuses the stage (on worker odd)" in entry["error"]
    assert not list(seaweed.store("odd").list(prefix="ac").collect())

    plan = project.run("tiny.yaml", "tiny/float/qnn/sm8550-sim/infer", "--plan",
                       "--scheduler", address, "--remote", seaweed.url("odd"),
                       env=cluster_env())
    assert f"tiny/float/qnn/sm8550-sim/infer: no worker of the Dask cluster at {address} " \
           f"can run it: needs htp_sim=1" in plan.stderr


def test_scheduler_lost_mid_build_then_the_rerun_resumes(
        tmp_path: Path, odd_cluster: tuple[str, Any], seaweed: SeaweedServer) -> None:
    """Kills the module's scheduler: the last test of the module."""
    address, scheduler = odd_cluster
    project = Project(tmp_path)
    marker = tmp_path / "attempts"
    project.write("recipe.yaml", slow_recipe(marker, 30))
    build = start_build(project, "--scheduler", address, "--remote",
                        seaweed.url("lost-scheduler"))
    wait_for_lines(marker, 1, build)
    kill_group(scheduler)
    lost_at = time.monotonic()
    _, err = build.communicate(timeout=90)
    assert build.returncode == 1, err
    assert f"lost the Dask scheduler at {address}: finished stages are cached" in err
    assert time.monotonic() - lost_at < 30
    assert statuses(report_of(project), "built") == {"steps/a", "steps/b"}
    # The re-run (here on this machine's pool, the same store and remote) resumes.
    project.write("recipe.yaml", slow_recipe(marker, 0))
    again = project.build("recipe.yaml", "--remote", seaweed.url("lost-scheduler"),
                          env=cluster_env())
    assert statuses(again, "built") == {"steps/slow", "steps/after"}


def test_no_remote_no_cluster(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.write("recipe.yaml", slow_recipe(tmp_path / "m", 0))
    result = project.run("recipe.yaml", "--scheduler", "tcp://127.0.0.1:1", check=False,
                         env=cluster_env())
    assert result.returncode == 2
    assert "--scheduler: stages travel to the workers through a shared cache" in result.stderr


def test_unreachable_scheduler_is_named(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.write("recipe.yaml", slow_recipe(tmp_path / "m", 0))
    address = "tcp://127.0.0.1:9"  # discard port: nothing listens
    result = project.run("recipe.yaml", "--remote", str(tmp_path / "shared"), check=False,
                         env=cluster_env({"MODELBUILD_SCHEDULER": address}))
    assert result.returncode == 1
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr


def test_a_dead_worker_is_replaced_boundedly(tmp_path: Path) -> None:
    """A stage that kills the worker process running it is tried on a second worker, then
    fails naming the limit (a scheduler of its own, allowed-failures 1; workers without a
    nanny, so the dead stay dead); -k builds the independent stage meanwhile."""
    project = Project(tmp_path)
    # Up from the command past the stage process (and the zygote it forked from, if any) to
    # the Dask worker process, which it kills.
    kill_my_worker = (
        "import os\n"
        "pid = os.getppid()\n"
        "while b'buildsys.execute' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
        "    pid = int(open(f'/proc/{pid}/stat').read().rsplit(') ', 1)[1].split()[1])\n"
        "os.kill(pid, 9)\n")
    project.write("recipe.yaml", yaml.safe_dump({"recipe": "crash", "steps": {
        "fine": {"cmd": [PY, "-c", "open('fine.txt', 'w').write('fine')"],
                 "outs": ["fine.txt"]},
        "crash": {"cmd": [PY, "-c", kill_my_worker], "outs": ["crash.txt"]},
    }}))
    address, scheduler = start_scheduler(
        tmp_path / "dask", {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    workers = [start_worker(address, tmp_path / "dask", name, "--no-nanny")
               for name in ("one", "two")]
    try:
        wait_for_workers(address, {"one", "two"})
        report = project.build("recipe.yaml", "--scheduler", address, "-k", "--remote",
                               str(tmp_path / "shared"), check=False, env=cluster_env())
    finally:
        for process in [*workers, scheduler]:
            kill_group(process)
    assert report["process"].returncode == 1
    assert statuses(report, "built") == {"steps/fine"}
    (crash,) = [s for s in report["stages"] if s["id"] == "steps/crash"]
    assert crash["status"] == "failed"
    assert "every worker that ran it died" in crash["error"]
    assert "2 different workers" in crash["error"]
    assert "allowed-failures" in crash["error"]


def test_local_workers_a_crashing_stage_fails_alone(tmp_path: Path) -> None:
    """--workers runs its Dask workers inside the build's process, each stage still in a
    process of its own: a stage whose process dies of SIGSEGV fails alone (-k builds the
    other), the build reports it and exits 1, and the re-run builds only that stage."""
    project = Project(tmp_path)
    crash = "import os, signal; os.kill(os.getppid(), signal.SIGSEGV)"  # the stage process
    steps = {"fine": {"cmd": [PY, "-c", "open('fine.txt', 'w').write('fine')"],
                      "outs": ["fine.txt"]},
             "crash": {"cmd": [PY, "-c", crash], "outs": ["crash.txt"]}}
    project.write("recipe.yaml", yaml.safe_dump({"recipe": "crash", "steps": steps}))
    report = project.build("recipe.yaml", "--workers", "2", "-k", check=False,
                           env=cluster_env())
    assert report["process"].returncode == 1
    assert statuses(report, "built") == {"steps/fine"}
    (failed,) = [s for s in report["stages"] if s["id"] == "steps/crash"]
    assert "SIGSEGV" in failed["error"] and "on worker worker-" in failed["error"]
    steps["crash"]["cmd"] = [PY, "-c", "open('crash.txt', 'w').write('fixed')"]
    project.write("recipe.yaml", yaml.safe_dump({"recipe": "crash", "steps": steps}))
    again = project.build("recipe.yaml", "--workers", "2", env=cluster_env())
    assert statuses(again, "built") == {"steps/crash"}
    assert statuses(again, "cached") == {"steps/fine"}


def test_local_cluster_workers_share_this_machines_store(tmp_path: Path) -> None:
    """--workers without --remote: the LocalCluster's workers are in this process, so they read
    and write its store (nothing copied between stores); a later local build finds every
    stage cached, and no remote cache was needed."""
    project = Project(tmp_path)
    project.write("recipe.yaml", yaml.safe_dump({"recipe": "shared", "steps": {
        "first": {"cmd": [PY, "-c", "open('a.txt', 'w').write('a')"], "outs": ["a.txt"]},
        "second": {"cmd": [PY, "-c", "open('b.txt', 'w').write(open('a.txt').read() + 'b')"],
                   "deps": ["a.txt"], "outs": ["b.txt"]},
    }}))
    report = project.build("recipe.yaml", "--workers", "1", env=cluster_env())
    assert statuses(report, "built") == {"steps/first", "steps/second"}
    assert {s["worker"] for s in report["stages"]} != {None}
    assert {s["worker"] for s in report["stages"]} == {"worker-0"}
    assert (project.root / "build/shared/steps/second/b.txt").read_text() == "ab"
    again = project.build("recipe.yaml", "-j", "1")  # the local pool, the same store
    assert statuses(again, "cached") == {"steps/first", "steps/second"}
