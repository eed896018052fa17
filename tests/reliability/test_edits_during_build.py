"""Edits while a build runs (an input file, a file a stage reads directly, the recipe): the
build uses the snapshot it planned with, or fails clearly; the lock never records a mix, and
the store never holds outputs under a key computed from other bytes than they were made from.

Stage keys do not depend on paths, so "the snapshot" is checked against clean builds of the
before- and after-edit projects in other directories.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Project, statuses
from tests.reliability.helpers import (
    PY,
    Reference,
    lock_stages,
    reference_build,
    start_build,
    stored_records,
)


def slow_step(marker: Path, out: str = "slow.txt", seconds: float = 1.2) -> list[str]:
    """A step that touches `marker` when it starts, then sleeps: the window for an edit."""
    code = (f"import time; open({str(marker)!r}, 'w').close(); time.sleep({seconds}); "
            f"open({out!r}, 'w').write('slow')")
    return ["  slow:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]",
            f"    outs: [{out}]"]


def copy_step(name: str, source: str, out: str, deps: list[str]) -> list[str]:
    code = f"open({out!r}, 'w').write(open({source!r}).read())"
    return [f"  {name}:", f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]",
            f"    deps: [{', '.join(deps)}]", f"    outs: [{out}]"]


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def references(tmp_path: Path, recipe: str, files: dict[str, list[str]]) -> list[Reference]:
    """Clean builds of `recipe` with each version of the files (same versions index)."""
    versions = len(next(iter(files.values())))
    out = []
    for v in range(versions):
        root = tmp_path / f"reference-{v}"
        project = Project(root)
        for name, texts in files.items():
            project.write(name, texts[v])
        out.append(reference_build(root, recipe))
    for marker in tmp_path.glob("*.started"):  # the reference builds ran the slow step too
        marker.unlink()
    return out


def test_input_edited_before_its_stage_starts(tmp_path: Path) -> None:
    """`late` reads b.txt after `slow`: b.txt changes while `slow` runs."""
    root = tmp_path / "project"
    marker = tmp_path / "slow.started"
    recipe = "\n".join(["recipe: edits", "steps:", *slow_step(marker),
                        *copy_step("late", "b.txt", "late.txt", ["slow.txt", "b.txt"])]) + "\n"
    before, after = references(tmp_path, recipe, {"b.txt": ["one", "two"]})
    project = Project(root)
    project.write("recipe.yaml", recipe)
    project.write("b.txt", "one")
    process = start_build(root)
    wait_for(marker)
    project.write("b.txt", "two")
    _, stderr = process.communicate(timeout=60)
    lock = lock_stages(root)
    if process.returncode == 0:  # it used the snapshot it planned with
        assert (root / "build/edits/steps/late/late.txt").read_text() == "one"
        assert lock == before.lock
    else:  # or it failed, clearly, and recorded nothing made from a mix
        assert process.returncode == 1
        assert "b.txt changed during the build; run again" in stderr, stderr
        assert "steps/late" not in stored_records(root / ".cache")
        assert all(lock[s] == before.lock[s] for s in lock), "the lock mixes two snapshots"
    report = project.build()
    assert (root / "build/edits/steps/late/late.txt").read_text() == "two"
    assert lock_stages(root) == after.lock
    assert statuses(report, "cached") == {"steps/slow"}


def test_file_read_directly_and_edited_while_its_stage_runs(tmp_path: Path) -> None:
    """A stage that reads a project file in place (as model code is imported from the
    project) while it is edited: its outputs must not be stored under the old bytes' key."""
    root = tmp_path / "project"
    marker = tmp_path / "reader.started"
    data = root / "data.txt"
    code = (f"import time; open({str(marker)!r}, 'w').close(); time.sleep(1.0); "
            f"open('out.txt', 'w').write(open({str(data)!r}).read())")
    recipe = "\n".join(["recipe: direct", "steps:", "  reader:",
                        f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]",
                        "    deps: [data.txt]", "    outs: [out.txt]"]) + "\n"
    project = Project(root)
    project.write("recipe.yaml", recipe)
    project.write("data.txt", "old")
    process = start_build(root)
    wait_for(marker)
    project.write("data.txt", "new")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "data.txt changed during the build, while the stage ran" in stderr
    assert "steps/reader" not in stored_records(root / ".cache")
    assert not (root / "build/direct/steps/reader/out.txt").exists()
    # with the file left alone, the stage records what it read ...
    project.build()
    assert (root / "build/direct/steps/reader/out.txt").read_text() == "new"
    # ... and going back to the old bytes never brings back the new bytes' output
    project.write("data.txt", "old")
    project.build()
    assert (root / "build/direct/steps/reader/out.txt").read_text() == "old"


def test_recipe_edited_while_stages_run(tmp_path: Path) -> None:
    root = tmp_path / "project"
    marker = tmp_path / "slow.started"

    def recipe(text: str) -> str:
        code = f"open('after.txt', 'w').write({text!r} + open('slow.txt').read())"
        return "\n".join(["recipe: edits", "steps:", *slow_step(marker), "  after:",
                          f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]",
                          "    deps: [slow.txt]", "    outs: [after.txt]"]) + "\n"

    before = reference_build(tmp_path / "reference-A", recipe("A"))
    after = reference_build(tmp_path / "reference-B", recipe("B"))
    marker.unlink()
    project = Project(root)
    project.write("recipe.yaml", recipe("A"))
    process = start_build(root)
    wait_for(marker)
    project.write("recipe.yaml", recipe("B"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert (root / "build/edits/steps/after/after.txt").read_text() == "Aslow"  # the snapshot
    assert lock_stages(root) == before.lock
    report = project.build()
    assert statuses(report, "built") == {"steps/after"}
    assert (root / "build/edits/steps/after/after.txt").read_text() == "Bslow"
    assert lock_stages(root) == after.lock


def test_two_stages_reading_one_file_see_the_same_bytes(tmp_path: Path) -> None:
    """`early` reads c.txt at once, `late` after `slow`; c.txt changes in between."""
    root = tmp_path / "project"
    marker = tmp_path / "slow.started"
    recipe = "\n".join(["recipe: edits", "steps:", *slow_step(marker),
                        *copy_step("early", "c.txt", "early.txt", ["c.txt"]),
                        *copy_step("late", "c.txt", "late.txt", ["slow.txt", "c.txt"])]) + "\n"
    before, after = references(tmp_path, recipe, {"c.txt": ["one", "two"]})
    project = Project(root)
    project.write("recipe.yaml", recipe)
    project.write("c.txt", "one")
    process = start_build(root, "-j", "2")
    wait_for(marker)
    early = root / "build/edits/steps/early/early.txt"
    deadline = time.monotonic() + 30
    while not early.exists():  # `early` has stored c.txt's snapshot
        assert time.monotonic() < deadline
        time.sleep(0.02)
    project.write("c.txt", "two")
    _, stderr = process.communicate(timeout=60)
    assert early.read_text() == "one"
    lock = lock_stages(root)
    if process.returncode == 0:  # both used the snapshot planned with
        assert (root / "build/edits/steps/late/late.txt").read_text() == "one"
        assert lock == before.lock
    else:  # or `late` refused to run on a file changed since planning
        assert "c.txt changed during the build; run again" in stderr, stderr
        assert not (root / "build/edits/steps/late").exists()
        assert "steps/late" not in stored_records(root / ".cache")
        assert all(lock[s] == before.lock[s] for s in lock), "the lock mixes two snapshots"
    project.build()
    assert early.read_text() == (root / "build/edits/steps/late/late.txt").read_text() == "two"
    assert lock_stages(root) == after.lock
