"""Disk full while the store or the project is written: a clear error (exit 1, no traceback),
no partial blob indexed, no record for the stage, and the next run (with space) succeeds.

Two ways to fill the disk: a real 3 MiB tmpfs as the cache directory (needs root; skipped
otherwise), and an injected ENOSPC / SQLITE_FULL through a `sitecustomize` module that the
`modelbuild` process imports at start-up (portable, and reaches places a tmpfs cannot aim at).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Project, statuses
from tests.reliability.helpers import PY, cache_verify, store_debris, stored_records

RECIPE = f"""\
recipe: full
steps:
  small:
    cmd: [{json.dumps(PY)}, "-c", "open('s.txt', 'w').write('s')"]
    outs: [s.txt]
  big:
    cmd: [{json.dumps(PY)}, "-c", "open('big.bin', 'wb').write(bytes(range(256)) * 8000)"]
    outs: [big.bin]
  after_big:
    cmd: [{json.dumps(PY)}, "-c", "open('n.txt', 'w').write(str(len(open('big.bin', 'rb').read())))"]
    deps: [big.bin]
    outs: [n.txt]
"""  # noqa: E501
BIG = 256 * 8000  # 2 MB: fits a 3 MiB disk once (the stage's scratch copy), not twice

# Imported by every Python process started with this directory first on PYTHONPATH (the
# coordinator, stage workers, step commands); each patch fires only where the coordinator
# writes the file named, and only for the fault named in $MODELBUILD_TEST_FAULT.
SITECUSTOMIZE = '''
import errno, os

FAULT = os.environ.get("MODELBUILD_TEST_FAULT", "")
if FAULT:
    if FAULT == "blob_enospc":
        real_fsync = os.fsync

        def fsync(fd):
            if os.fstat(fd).st_size > 100_000:  # the big output: half of it is on disk now
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        os.fsync = fsync
    elif FAULT == "index_full":
        import sqlite3
        import diskcache

        real_set = diskcache.Cache.set

        def set_(self, key, value, *args, **kwargs):
            if str(key).startswith("ac:") and "steps/big" in str(value):
                raise sqlite3.OperationalError("database or disk is full")
            return real_set(self, key, value, *args, **kwargs)

        diskcache.Cache.set = set_
    elif FAULT in ("lock_enospc", "report_enospc"):
        import pathlib

        real_write_text = pathlib.Path.write_text
        prefix = ".recipe.lock.tmp" if FAULT == "lock_enospc" else ".report.json.tmp"

        def write_text(self, *args, **kwargs):
            if self.name.startswith(prefix):
                real_write_text(self, "partial")  # the disk fills up half way through
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write_text(self, *args, **kwargs)

        pathlib.Path.write_text = write_text
'''


def with_fault(project: Project, fault: str) -> dict[str, str]:
    hooks = project.root.parent / f"{project.root.name}-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    return {"PYTHONPATH": f"{hooks}:{REPO}", "MODELBUILD_TEST_FAULT": fault}


def assert_clean_failure(project: Project, report: dict, message: str,
                         whole_blob_may_stay: bool = False) -> None:
    process: subprocess.CompletedProcess[str] = report["process"]
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    assert message in process.stderr, process.stderr
    failed = statuses(report, "failed")
    assert failed == {"steps/big"}, report["stages"]
    assert "steps/big" not in stored_records(project.cache)
    big_blobs = [p for p in (project.cache / "cas").rglob("*") if p.is_file()
                 and p.stat().st_size >= 100_000]
    if whole_blob_may_stay:  # stored before its record failed: complete, unreferenced
        assert all(p.stat().st_size == BIG and hashlib.sha256(p.read_bytes()).hexdigest()
                   == p.name for p in big_blobs)
    else:
        assert big_blobs == []  # no partial (or whole) blob of the output in the store
    assert store_debris(project.cache) == []  # the half-written temp file is gone too
    assert cache_verify(project.root).returncode == 0


def assert_recovers(project: Project) -> None:
    report = project.build("recipe.yaml")
    assert statuses(report, "built") == {"steps/big", "steps/after_big"}
    assert (project.root / "build/full/steps/after_big/n.txt").read_text() == str(BIG)
    assert cache_verify(project.root).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-ENOSPC "
                    f"test covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_while_storing_a_blob(small_disk: Path, tmp_path: Path) -> None:
    project = Project(tmp_path / "project")
    project.cache = small_disk
    project.write("recipe.yaml", RECIPE)
    # one stage at a time: `small` must not meet the disk while `big` has filled it
    report = project.build("recipe.yaml", "--keep-going", "-j", "1", "--cache-dir",
                           str(small_disk), check=False)
    assert statuses(report, "built") == {"steps/small"}
    assert_clean_failure(project, report, "disk full while storing big.bin")
    assert not (project.root / "build/full/steps/big").exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    report = project.build("recipe.yaml", "--cache-dir", str(small_disk))
    assert statuses(report, "built") == {"steps/big", "steps/after_big"}
    assert (project.root / "build/full/steps/after_big/n.txt").read_text() == str(BIG)


def test_injected_enospc_while_storing_a_blob(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build("recipe.yaml", "-k", check=False,
                           env=with_fault(project, "blob_enospc"))
    assert_clean_failure(project, report, "disk full while storing big.bin")
    assert_recovers(project)


def test_index_database_full_while_recording_a_stage(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build("recipe.yaml", "-k", check=False,
                           env=with_fault(project, "index_full"))
    assert_clean_failure(project, report, "database or disk is full", whole_blob_may_stay=True)
    assert_recovers(project)


def test_disk_full_while_writing_the_lock_file(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    project.build("recipe.yaml")
    lock = project.root / "recipe.lock"
    before = lock.read_text()
    project.write("recipe.yaml", RECIPE.replace("'s'", "'t'"))
    report = project.build("recipe.yaml", check=False, env=with_fault(project, "lock_enospc"))
    process = report["process"]
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert "recipe.lock" in process.stderr and "No space left" in process.stderr
    assert lock.read_text() == before  # the old lock is intact: never half a lock file
    assert [p.name for p in project.root.iterdir() if ".tmp" in p.name] == []
    report = project.build("recipe.yaml")  # with space again: only the lock was missing
    assert statuses(report, "built") == set()
    assert lock.read_text() != before


def test_disk_full_while_writing_the_report(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build("recipe.yaml", check=False, env=with_fault(project, "report_enospc"))
    process = report["process"]
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert "report.json" in process.stderr and "No space left" in process.stderr
    assert not (project.root / "report.json").exists()
    assert [p.name for p in project.root.iterdir() if ".tmp" in p.name] == []
