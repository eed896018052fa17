"""Fault-injection helpers shared by tests/reliability and benchmarks/faults.py.

Everything here drives the real CLI (`python -m buildsys`) in subprocesses on command-step
recipes, and judges the outcome by what is on disk: build outputs, the lock file, the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Project

PY = sys.executable


def chain_recipe(steps: int = 15, sleep: float = 0.15, seed: int = 0) -> str:
    """`steps` command steps in a DAG (each reads one or two earlier outputs), with sleeps.

    Every output is a digest of the step's name and its inputs' bytes, so a stage run on the
    wrong inputs, or an output mixed up between stages, shows in the final artifacts.
    """
    rng = random.Random(seed)
    lines = ["recipe: chain", "steps:"]
    for i in range(steps):
        # two interleaved chains with random cross edges: two stages can run at once
        deps = sorted({f"s{j}.txt" for j in (i - 2, rng.randrange(i)) if j >= 0} if i else [])
        pause = round(sleep * rng.uniform(0.5, 1.5), 3)
        code = (f"import hashlib, time; time.sleep({pause}); h = hashlib.sha256(b's{i}'); "
                f"[h.update(open(d, 'rb').read()) for d in {deps!r}]; "
                f"open('s{i}.txt', 'w').write(h.hexdigest() * 64)")
        lines.append(f"  s{i}:")
        lines.append(f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]")
        if deps:
            lines.append(f"    deps: [{', '.join(deps)}]")
        lines.append(f"    outs: [s{i}.txt]")
    return "\n".join(lines) + "\n"


def chain_stage_ids(steps: int = 15) -> set[str]:
    return {f"steps/s{i}" for i in range(steps)}


def file_digests(root: Path, sub: str = "build") -> dict[str, str]:
    """sha256 of every regular file under root/sub, the build folders of every recipe built
    there (`build/<recipe>/`); logs are excluded: they are not artifacts."""
    base = root / sub
    out = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if path.is_file() and "logs" not in rel.split("/")[:2]:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lock_stages(root: Path, recipe: str = "recipe.yaml") -> dict[str, Any]:
    from buildsys.store.lock import read_lock

    return read_lock(root / Path(recipe).with_suffix(".lock"))


def stored_records(cache: Path) -> dict[str, dict[str, Any]]:
    """stage id → record, for every record in the store's index (read in this process)."""
    from buildsys.store.store import Store

    store = Store(cache)
    try:
        return {r["stage_id"]: r for r in store.index.records().values()}
    finally:
        store.close()


def store_debris(cache: Path) -> list[str]:
    """Files in the store's temporary area (scratch directories, half-written blobs)."""
    tmp = cache / "tmp"
    return sorted(p.relative_to(cache).as_posix() for p in tmp.rglob("*")
                  if p.is_file()) if tmp.exists() else []


def env_for_cli(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(extra or {})}
    env.pop("MODELBUILD_CACHE_DIR", None)
    return env


def start_build(root: Path, *args: str, env: dict[str, str] | None = None,
                recipe: str = "recipe.yaml") -> subprocess.Popen[str]:
    """Start `modelbuild RECIPE ARGS` in its own process group (so it can be killed whole)."""
    return subprocess.Popen([PY, "-m", "buildsys", recipe, "-q", *args], cwd=root,
                            env=env_for_cli(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the build's whole process group, as an OOM killer or `kill -9 -PGID` would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def processes_under(root: Path) -> list[int]:
    """Live processes (other than this one) whose command line or working directory is
    inside `root`: the build's coordinator, its workers and their commands."""
    found = []
    marker = str(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or cwd.startswith(marker)):
            found.append(int(entry.name))
    return found


def wait_no_processes_under(root: Path, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_leftovers(root: Path) -> None:
    for pid in processes_under(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cache_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "buildsys", "cache", "verify", "--cache-dir",
                           str(root / ".cache")], cwd=root, env=env_for_cli(),
                          capture_output=True, text=True, timeout=120)


@dataclass
class Reference:
    """A clean build of a recipe: its artifacts and lock (stage keys are path-independent)."""

    artifacts: dict[str, str]
    lock: dict[str, Any]
    wall_s: float


def reference_build(root: Path, recipe_text: str, *args: str) -> Reference:
    project = Project(root)
    project.write("recipe.yaml", recipe_text)
    started = time.monotonic()
    report = project.build("recipe.yaml", *args)
    assert report["ok"], report["process"].stderr
    return Reference(file_digests(root), lock_stages(root), time.monotonic() - started)


@dataclass
class KillPoint:
    delay_s: float
    completed_before: set[str] = field(default_factory=set)  # stages with a record at the kill
    rerun_built: set[str] = field(default_factory=set)
    recovered: bool = False  # the re-run succeeded
    wrong: list[str] = field(default_factory=list)  # what differs from the reference
    problems: list[str] = field(default_factory=list)  # other broken promises


def kill_and_recover(root: Path, recipe_text: str, delay_s: float, reference: Reference,
                     *args: str, orphan_timeout: float = 3.0) -> KillPoint:
    """Start a build, SIGKILL its process group after `delay_s`, then build again to the end.

    Checks: the re-run succeeds; every stage that had a record when the build was killed is
    reused (not run again); outputs and lock equal the reference build's; `cache verify` is
    clean; no process of the killed build outlives it.
    """
    project = Project(root)
    project.write("recipe.yaml", recipe_text)
    point = KillPoint(delay_s)
    process = start_build(root, *args)
    time.sleep(delay_s)
    kill_group(process)
    left = wait_no_processes_under(root, orphan_timeout)
    if left:
        point.problems.append(f"{len(left)} process(es) of the killed build still running")
        kill_leftovers(root)
    if (root / ".cache").exists():
        point.completed_before = set(stored_records(root / ".cache"))
    report = project.build("recipe.yaml", *args, check=False)
    point.recovered = bool(report.get("ok"))
    if not point.recovered:
        point.problems.append(f"re-run failed: {report['process'].stderr[-2000:]}")
        return point
    point.rerun_built = {s["id"] for s in report["stages"] if s["status"] == "built"}
    rerun_again = point.completed_before & point.rerun_built
    if rerun_again:
        point.problems.append(f"completed stages ran again: {sorted(rerun_again)}")
    artifacts = file_digests(root)
    if artifacts != reference.artifacts:
        differing = sorted(k for k in set(artifacts) | set(reference.artifacts)
                           if artifacts.get(k) != reference.artifacts.get(k))
        point.wrong.append(f"artifacts differ: {differing}")
    if lock_stages(root) != reference.lock:
        point.wrong.append("lock differs from the reference build's")
    debris = store_debris(root / ".cache")
    if debris:
        point.problems.append(f"temporary files of the killed build left behind: {debris[:5]}")
    verify = cache_verify(root)
    if verify.returncode != 0:
        point.problems.append(f"cache verify failed: {verify.stdout}{verify.stderr}")
    return point


def kill_schedule(count: int, longest_s: float, seed: int) -> list[float]:
    """Seeded kill delays spread over the whole build (early, middle, late)."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.05, longest_s), 3) for _ in range(count)]
