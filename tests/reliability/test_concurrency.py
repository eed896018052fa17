"""Two and four `modelbuild` processes on the same recipe and store at the same time: all
succeed, each stage is computed at least once and at most once per process (harmlessly
twice), and every process sees the same artifacts as a build done alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Project, statuses
from tests.reliability.helpers import (
    PY,
    cache_verify,
    env_for_cli,
    file_digests,
    lock_stages,
    reference_build,
)

STEPS = 8


def counting_recipe(runs_log: Path) -> str:
    """A DAG of steps that each append their name to `runs_log` when they really run."""
    lines = ["recipe: shared", "steps:"]
    for i in range(STEPS):
        deps = [f"s{j}.txt" for j in {i - 1, i // 2} if 0 <= j < i]
        code = (f"import time; open({str(runs_log)!r}, 'a').write('s{i}\\n'); time.sleep(0.2); "
                f"data = ''.join(open(d).read() for d in {sorted(deps)!r}); "
                f"open('s{i}.txt', 'w').write('s{i}:' + str(len(data)) + data[:100])")
        lines += [f"  s{i}:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]",
                  f"    outs: [s{i}.txt]"]
        if deps:
            lines.append(f"    deps: [{', '.join(sorted(deps))}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_builds_share_one_store(tmp_path: Path, processes: int) -> None:
    runs_log = tmp_path / "runs.log"
    recipe = counting_recipe(runs_log)
    reference = reference_build(tmp_path / "alone", recipe)
    runs_log.unlink()
    root = tmp_path / "shared"
    project = Project(root)
    project.write("recipe.yaml", recipe)
    procs = [subprocess.Popen([PY, "-m", "buildsys", "recipe.yaml", "-q", "-j", "2",
                               "--report", f"report-{i}.json"], cwd=root, env=env_for_cli(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "warning" not in err, err
    runs = runs_log.read_text().split()
    for i in range(STEPS):
        assert 1 <= runs.count(f"s{i}") <= processes, runs
    reports = [json.loads((root / f"report-{i}.json").read_text()) for i in range(processes)]
    seen = [{s["id"]: s["outputs"] for s in r["stages"]} for r in reports]
    assert all(s == seen[0] for s in seen)  # every process got the same output digests
    assert all(r["ok"] and not statuses(r, "failed") for r in reports)
    built_somewhere = set().union(*(statuses(r, "built") for r in reports))
    assert built_somewhere | set().union(*(statuses(r, "cached") for r in reports)) == \
        {f"steps/s{i}" for i in range(STEPS)}
    assert file_digests(root) == reference.artifacts
    assert lock_stages(root) == reference.lock
    assert cache_verify(root).returncode == 0
    assert [p.name for p in root.rglob("*.tmp*")] == []  # no temp file of anyone left behind
    assert statuses(project.build(), "built") == set()
