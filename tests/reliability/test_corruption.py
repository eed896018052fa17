"""A damaged store is detected, reported and rebuilt; it never yields a wrong artifact.

Damage: flipped bytes in a blob, a truncated blob, a deleted blob, a blob damaged between
planning and use, an index database overwritten with garbage, damaged in some pages only, or
hit by random byte flips, and a record altered to point at another stage's (valid) blob.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import Project, statuses
from tests.reliability.helpers import (
    PY,
    Reference,
    cache_verify,
    file_digests,
    lock_stages,
    reference_build,
    start_build,
)

# Four steps; `left` and `right` write outputs of the same size.
RECIPE = f"""\
recipe: store
steps:
  left:
    cmd: [{json.dumps(PY)}, "-c", "open('l.txt', 'w').write(open('src.txt').read() * 50)"]
    deps: [src.txt]
    outs: [l.txt]
  right:
    cmd: [{json.dumps(PY)}, "-c", "open('r.txt', 'w').write(open('src.txt').read()[::-1] * 50)"]
    deps: [src.txt]
    outs: [r.txt]
  both:
    cmd: [{json.dumps(PY)}, "-c", "open('b.txt', 'w').write(open('l.txt').read() + open('r.txt').read())"]
    deps: [l.txt, r.txt]
    outs: [b.txt]
  slow:
    cmd: [{json.dumps(PY)}, "-c", "import time; time.sleep(1.5); open('s.txt', 'w').write('s')"]
    outs: [s.txt]
"""  # noqa: E501
ALL = {"steps/left", "steps/right", "steps/both", "steps/slow"}


def make(root: Path) -> Project:
    project = Project(root)
    project.write("recipe.yaml", RECIPE)
    project.write("src.txt", "abcdefgh")
    return project


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    make(root)
    return reference_build(root, RECIPE)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built project, copied afresh for each test that damages it."""
    root = tmp_path_factory.mktemp("pristine")
    make(root).build()
    return root


@pytest.fixture
def built(pristine: Path, tmp_path: Path) -> Project:
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    # the copy has new inodes: re-link build/ to the copied store the way a build does
    project = Project(root)
    assert statuses(project.build(), "built") == set()
    return project


def blob_of(project: Project, stage: str, name: str) -> Path:
    output = lock_stages(project.root)[stage]["outputs"][name]
    return project.cache / "cas" / output[:2] / output


def damage(blob: Path, how: str) -> None:
    if how == "deleted":
        blob.unlink()
        return
    data = bytearray(blob.read_bytes())
    stat = blob.stat()
    os.chmod(blob, 0o644)
    if how == "flipped":
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
    else:  # truncated
        blob.write_bytes(bytes(data[: len(data) // 3]))
    os.chmod(blob, 0o444)
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide it from a mtime check


def assert_like_reference(project: Project, reference: Reference) -> None:
    assert file_digests(project.root) == reference.artifacts
    assert lock_stages(project.root) == reference.lock
    verify = cache_verify(project.root)
    assert verify.returncode == 0, verify.stdout


@pytest.mark.parametrize("how", ["flipped", "truncated", "deleted"])
def test_damaged_blob_is_rebuilt_by_the_next_build(built: Project, reference: Reference,
                                                   how: str) -> None:
    damage(blob_of(built, "steps/left", "l.txt"), how)
    report = built.build()
    assert statuses(report, "built") == {"steps/left"}  # `both` is an early cutoff
    stderr = report["process"].stderr
    assert "steps/left" in stderr and "missing or corrupt" in stderr
    assert_like_reference(built, reference)


@pytest.mark.parametrize("how", ["flipped", "truncated", "deleted"])
def test_cache_verify_reports_a_damaged_blob(built: Project, reference: Reference,
                                             how: str) -> None:
    damage(blob_of(built, "steps/right", "r.txt"), how)
    verify = cache_verify(built.root)
    assert verify.returncode == 1
    assert "steps/right: missing r.txt" in verify.stdout
    if how != "deleted":
        assert f"corrupt blob {reference.lock['steps/right']['outputs']['r.txt']}" in \
            verify.stdout
    assert cache_verify(built.root).returncode == 0  # it removed what it reported
    assert statuses(built.build(), "built") == {"steps/right"}
    assert_like_reference(built, reference)


def test_blob_damaged_while_the_build_runs_fails_clearly(built: Project,
                                                         reference: Reference) -> None:
    """`both` is planned to run after `slow`... no: `both` needs `left`, which is cached; we
    make `both` run (its recipe entry changed) and damage `left`'s blob after planning."""
    built.write("recipe.yaml", RECIPE.replace(
        "open('l.txt').read() + open('r.txt').read()",
        "__import__('time').sleep(1.0) or open('l.txt').read() + open('r.txt').read()").replace(
        "deps: [l.txt, r.txt]", "deps: [s.txt, l.txt, r.txt]").replace(
        "time.sleep(1.5); open('s.txt', 'w').write('s')",
        "time.sleep(1.5); open('s.txt', 'w').write('S')"))
    process = start_build(built.root, "--report", "report.json")
    time.sleep(0.8)  # planned (left: cached), `slow` running, `both` waits for it
    damage(blob_of(built, "steps/left", "l.txt"), "flipped")
    _, stderr = process.communicate(timeout=60)
    report = json.loads((built.root / "report.json").read_text())
    both = next(s for s in report["stages"] if s["id"] == "steps/both")
    if process.returncode == 0:  # the damage came before `left` was checked: rebuilt
        assert both["status"] == "built"
        assert "steps/left" in {s["id"] for s in report["stages"] if s["status"] == "built"}
    else:
        assert both["status"] == "failed", stderr
        assert "l.txt from steps/left is missing or corrupt" in both["error"]
    assert "Traceback" not in stderr
    again = built.build()  # whatever happened, the next build puts it right
    assert (built.root / "build/store/steps/left/l.txt").read_text() == "abcdefgh" * 50
    assert again["ok"]


# --- the index database ------------------------------------------------------------------

def index_db(project: Project) -> Path:
    return project.cache / "index" / "cache.db"


def test_index_overwritten_with_garbage_is_replaced(built: Project,
                                                    reference: Reference) -> None:
    db = index_db(built)
    db.write_bytes(random.Random(0).randbytes(db.stat().st_size))
    report = built.build()
    stderr = report["process"].stderr
    assert report["ok"] and "cache index" in stderr and "damaged" in stderr, stderr
    assert statuses(report, "built") == ALL  # records lost: every stage ran again ...
    assert_like_reference(built, reference)  # ... to the same bytes
    assert statuses(built.build(), "built") == set()


def damage_pages(db: Path, first_page: int) -> None:
    """Garbage in every page from `first_page` on; the header page stays valid."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    rng = random.Random(first_page)
    for i in range(first_page * page, len(data)):
        data[i] = rng.randrange(256)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("first_page", [1, 2, 3])
def test_index_with_damaged_pages_is_replaced(built: Project, reference: Reference,
                                              first_page: int) -> None:
    db = index_db(built)
    if db.stat().st_size <= first_page * 4096:
        pytest.skip("index smaller than expected")
    damage_pages(db, first_page)
    report = built.build(check=False)
    stderr = report["process"].stderr
    assert "Traceback" not in stderr, stderr
    assert report["ok"], stderr
    assert_like_reference(built, reference)


def test_cache_verify_detects_a_damaged_index(built: Project, reference: Reference) -> None:
    damage_pages(index_db(built), 2)
    verify = cache_verify(built.root)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "index" in verify.stdout + verify.stderr and "Traceback" not in verify.stderr
    assert cache_verify(built.root).returncode == 0
    assert built.build()["ok"]
    assert_like_reference(built, reference)


@pytest.mark.parametrize("seed", range(6))
def test_random_byte_flips_in_the_index_never_give_a_wrong_artifact(
        built: Project, reference: Reference, seed: int) -> None:
    """Bit rot: a few random bytes of the database flipped. SQLite notices damage to its own
    structure, but not to the values it stores: a record or a stat-cache entry may be
    silently altered. The build must still end with the reference artifacts."""
    db = index_db(built)
    data = bytearray(db.read_bytes())
    rng = random.Random(seed)
    for _ in range(4):
        data[rng.randrange(100, len(data))] ^= 1 << rng.randrange(8)
    db.write_bytes(bytes(data))
    report = built.build(check=False)
    stderr = report["process"].stderr
    assert "Traceback" not in stderr, stderr
    assert report["ok"], stderr
    assert file_digests(built.root) == reference.artifacts
    assert lock_stages(built.root) == reference.lock
    # damage the build did not need to read is found by verify (and removed) ...
    verify = cache_verify(built.root)
    assert verify.returncode == 0 or "index problem" in verify.stdout, verify.stdout
    assert "Traceback" not in verify.stderr, verify.stderr
    assert cache_verify(built.root).returncode == 0
    # ... and the store is settled: no endless rework, the same artifacts
    assert built.build()["ok"]
    assert statuses(built.build(), "built") == set()
    assert file_digests(built.root) == reference.artifacts


def test_a_record_altered_to_point_at_another_blob_is_not_trusted(
        built: Project, reference: Reference) -> None:
    """A record edited in place (valid JSON, an existing blob of the same size): the index
    must notice the record is not what was written, rather than materialise the wrong
    bytes as `left`'s output."""
    import sqlite3

    lock = lock_stages(built.root)
    left, right = lock["steps/left"]["outputs"]["l.txt"], lock["steps/right"]["outputs"]["r.txt"]
    con = sqlite3.connect(index_db(built))
    rows = con.execute("SELECT rowid, value FROM Cache WHERE key = ?",
                       (f"ac:{lock['steps/left']['key']}",)).fetchall()
    assert len(rows) == 1 and left in rows[0][1]
    con.execute("UPDATE Cache SET value = ? WHERE rowid = ?",
                (rows[0][1].replace(left, right), rows[0][0]))
    con.commit()
    con.close()
    (built.root / "build/store/steps/left/l.txt").unlink()
    report = built.build(check=False)
    assert (built.root / "build/store/steps/left/l.txt").read_text() == "abcdefgh" * 50
    assert report["ok"] and statuses(report, "built") == {"steps/left"}
    assert_like_reference(built, reference)
