"""The build system on command steps: real processes, a real store on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import LIKE_A_TERMINAL, REPO, Project, statuses

PY = sys.executable

RECIPE = f"""\
recipe: demo
steps:
  upper:
    cmd: ["{PY}", "-c", "open('up.txt','w').write(open('src.txt').read().upper())"]
    deps: [src.txt]
    outs: [up.txt]
  count:
    cmd: ["{PY}", "-c", "open('n.txt','w').write(str(len(open('up.txt').read())))"]
    deps: [up.txt]
    outs: [n.txt]
  report:
    cmd: ["{PY}", "-c", "open('r.txt','w').write('n=' + open('n.txt').read())"]
    deps: [n.txt]
    outs: [r.txt]
  other:
    cmd: ["{PY}", "-c", "open('o.txt','w').write('other')"]
    outs: [o.txt]
"""
ALL = {"steps/upper", "steps/count", "steps/report", "steps/other"}


def make(project: Project, recipe: str = RECIPE) -> None:
    project.write("recipe.yaml", recipe)
    project.write("src.txt", "hello")


def test_second_run_executes_nothing(project: Project) -> None:
    make(project)
    first = project.build()
    assert statuses(first, "built") == ALL
    assert (project.root / "build/demo/steps/report/r.txt").read_text() == "n=5"
    second = project.build()
    assert statuses(second, "built") == set()
    assert statuses(second, "cached") == ALL


def test_changing_a_source_reruns_exactly_its_dependants(project: Project) -> None:
    make(project)
    project.build()
    project.write("src.txt", "hello world")
    report = project.build()
    assert statuses(report, "built") == {"steps/upper", "steps/count", "steps/report"}
    assert statuses(report, "cached") == {"steps/other"}
    reasons = {s["id"]: s["reason"] for s in report["stages"]}
    assert reasons["steps/upper"] == "input changed: src.txt"


def test_editing_a_step_parameter_reruns_it_and_downstream(project: Project) -> None:
    make(project)
    project.build()
    make(project, RECIPE.replace("'n=' +", "'count=' +"))
    report = project.build()
    assert statuses(report, "built") == {"steps/report"}
    plan = json.loads(project.run("recipe.yaml", "--plan", "--json").stdout)
    assert all(s["status"] == "cached" for s in plan["stages"])


def test_early_cutoff(project: Project) -> None:
    make(project)
    project.build()
    project.write("src.txt", "HELLO")  # upper-cases to the same bytes
    report = project.build()
    assert statuses(report, "built") == {"steps/upper"}
    cutoff = {s["id"]: s["reason"] for s in report["stages"] if s["status"] == "cached"}
    assert cutoff["steps/count"].startswith("early cutoff")


def test_plan_reasons_and_explain(project: Project) -> None:
    make(project)
    plan = project.run("recipe.yaml", "--plan").stdout
    assert "steps/upper" in plan and "new" in plan and "4 to run" in plan
    assert not (project.root / "build").exists()  # --plan runs nothing
    project.build()
    make(project, RECIPE.replace("'other'", "'changed'"))
    plan_json = json.loads(project.run("recipe.yaml", "--plan", "--json").stdout)
    reasons = {s["id"]: (s["status"], s["reason"]) for s in plan_json["stages"]}
    assert reasons["steps/other"] == ("run", "parameters changed: cmd")
    explained = project.run("recipe.yaml", "--explain", "steps/upper").stdout
    assert "input   src.txt = " in explained and "key     " in explained


def test_selection_builds_only_what_matches_and_needs(project: Project) -> None:
    make(project)
    report = project.build("recipe.yaml", "steps/count")
    assert statuses(report, "built") == {"steps/upper", "steps/count"}


def test_force_reruns_and_cuts_off(project: Project) -> None:
    make(project)
    project.build()
    report = project.build("recipe.yaml", "--force", "steps/upper")
    assert statuses(report, "built") == {"steps/upper"}
    assert {"steps/count", "steps/report"} <= statuses(report, "cached")


def test_outputs_are_read_only_hardlinks_of_the_store(project: Project) -> None:
    make(project)
    project.build()
    out = project.root / "build/demo/steps/upper/up.txt"
    assert not os.access(out, os.W_OK) or os.geteuid() == 0
    assert out.stat().st_mode & 0o222 == 0
    assert out.stat().st_nlink >= 2


def test_corrupt_blob_is_detected_and_rebuilt(project: Project) -> None:
    make(project)
    project.build()
    blob = project.root / "build/demo/steps/upper/up.txt"  # a hardlink: same bytes as the blob
    os.chmod(blob, 0o644)
    blob.write_text("HELLX")  # same size, different bytes
    report = project.build()
    assert "steps/upper" in statuses(report, "built")
    assert "corrupt" in report["process"].stderr
    assert (project.root / "build/demo/steps/upper/up.txt").read_text() == "HELLO"
    assert statuses(project.build(), "built") == set()


def test_deleted_blob_is_rebuilt(project: Project) -> None:
    make(project)
    project.build()
    for blob in (project.cache / "cas").rglob("*"):
        if blob.is_file() and blob.read_bytes() == b"5":
            blob.unlink()
    report = project.build()
    assert statuses(report, "built") == {"steps/count"}
    assert (project.root / "build/demo/steps/count/n.txt").read_text() == "5"


def test_lock_file_and_check(project: Project) -> None:
    make(project)
    project.build()
    lock = (project.root / "recipe.lock").read_text()
    assert "steps/upper:" in lock and "up.txt:" in lock
    project.build("recipe.yaml", "--check")
    assert (project.root / "recipe.lock").read_text() == lock
    # A step whose output is not reproducible: --check names it.
    make(project, RECIPE.replace("'other'", "str(__import__('time').time_ns())"))
    project.build()
    project.run("cache", "gc", "--lock", "none.lock")  # forget everything
    failed = project.build("recipe.yaml", "--check", check=False)
    assert failed["process"].returncode == 1
    assert "steps/other: output differs from the lock: o.txt" in failed["process"].stderr


def test_failing_step_exit_code_and_log(project: Project) -> None:
    make(project, RECIPE.replace("open('o.txt','w').write('other')",
                                 "import sys; print('boom'); sys.exit(3)"))
    report = project.build("recipe.yaml", "--keep-going", check=False)
    assert report["process"].returncode == 1
    failed = {s["id"]: s for s in report["stages"] if s["status"] == "failed"}
    assert set(failed) == {"steps/other"}
    assert "status 3" in failed["steps/other"]["error"]
    assert "boom" in Path(failed["steps/other"]["log"]).read_text()
    assert statuses(report, "built") == ALL - {"steps/other"}


def test_sigkilled_stage_fails_alone_with_keep_going(project: Project) -> None:
    kill_self = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"
    recipe = RECIPE.replace("open('o.txt','w').write('other')", kill_self)
    make(project, recipe)
    report = project.build("recipe.yaml", "--keep-going", check=False)
    failed = {s["id"]: s["error"] for s in report["stages"] if s["status"] == "failed"}
    assert list(failed) == ["steps/other"]
    assert "SIGKILL" in failed["steps/other"]
    assert statuses(report, "built") == ALL - {"steps/other"}


def test_timeout_kills_the_step(project: Project) -> None:
    recipe = RECIPE.replace("open('o.txt','w').write('other')", "import time; time.sleep(60)")
    recipe = recipe.replace("    outs: [o.txt]", "    outs: [o.txt]\n    timeout: 1")
    make(project, recipe)
    started = time.monotonic()
    report = project.build("recipe.yaml", "--keep-going", check=False)
    assert time.monotonic() - started < 30
    failed = {s["id"]: s["error"] for s in report["stages"] if s["status"] == "failed"}
    assert "timed out after 1 s" in failed["steps/other"]


def test_without_keep_going_dependants_are_skipped(project: Project) -> None:
    make(project, RECIPE.replace("str(len(open('up.txt').read()))", "1/0"))
    report = project.build("recipe.yaml", "-j", "1", check=False)
    assert statuses(report, "failed") == {"steps/count"}
    assert "steps/report" in statuses(report, "skipped")


def test_two_concurrent_builds_share_one_store(project: Project) -> None:
    slow = RECIPE.replace("open('o.txt','w')", "__import__('time').sleep(0.5) or open('o.txt','w')")
    make(project, slow)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([PY, "-m", "buildsys", "recipe.yaml", "-q"], cwd=project.root,
                              env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert (project.root / "build/demo/steps/report/r.txt").read_text() == "n=5"
    assert project.run("cache", "verify", "--cache-dir", str(project.cache)).returncode == 0
    assert statuses(project.build(), "built") == set()


def test_ctrl_c_stops_cleanly_and_resumes(project: Project) -> None:
    recipe = RECIPE.replace("open('o.txt','w').write('other')",
                            "__import__('time').sleep(30)")
    make(project, recipe)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PY, "-c", LIKE_A_TERMINAL, "-m", "buildsys", "recipe.yaml", "-j",
                             "2"], cwd=project.root, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (project.root / "build/demo/steps/report/r.txt").exists():
        assert time.monotonic() < deadline, "chain did not finish"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    make(project)  # the slow step is fixed; the finished ones stay cached
    report = project.build()
    assert statuses(report, "built") == {"steps/other"}


def test_graph_and_cache_commands(project: Project) -> None:
    make(project)
    dot = project.run("graph", "recipe.yaml", "--format", "dot").stdout
    assert '"steps/upper" -> "steps/count"' in dot
    mermaid = project.run("graph", "recipe.yaml", "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "-->" in mermaid
    project.build()
    info = project.run("cache", "info").stdout
    assert "records  4" in info
    project.run("cache", "gc", "--lock", "recipe.lock")
    assert statuses(project.build(), "built") == set()
    gc = project.run("cache", "gc", "--lock", "none.lock").stdout
    assert "removed 4 record(s)" in gc
    assert statuses(project.build(), "built") == ALL


def test_stat_cache_avoids_rehashing(project: Project, monkeypatch) -> None:
    from buildsys import hashing
    from buildsys.store.store import Store

    big = project.root / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    calls: list[Path] = []
    real = hashing.digest_file
    monkeypatch.setattr("buildsys.store.statcache.digest_file",
                        lambda p: calls.append(p) or real(p))
    store = Store(project.cache)
    first = store.stats.digest(big)
    store.close()
    store = Store(project.cache)  # a later run: new process state, same index
    assert store.stats.digest(big) == first
    assert len(calls) == 1
    store.close()
    big.write_bytes(os.urandom(1 << 20))  # same size: mtime/inode tell
    store = Store(project.cache)
    assert store.stats.digest(big) != first
    assert len(calls) == 2
    store.close()
