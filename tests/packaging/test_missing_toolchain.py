"""A recipe that needs a toolchain the environment lacks fails at plan time, naming the extra.

The environment is real, not mocked: a Python started without its site-packages (`-S`) and
given, on PYTHONPATH, a directory holding every installed distribution but aimet-torch (its
files, as its own RECORD lists them, are left out), as after `pip install modelbuild[onnx]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def site_packages_without(distribution: str, dest: Path) -> Path:
    """Symlinks to everything in this interpreter's site-packages except `distribution`."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = metadata.distribution(distribution).files or []
    left_out = {f.parts[0] for f in files if f.parts and f.parts[0] != ".."}
    assert left_out, f"{distribution} lists no files"
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out and entry.suffix != ".pth":
            (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def without_aimet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PYTHONPATH for `python -S`: this source tree and every distribution but aimet-torch."""
    site = site_packages_without("aimet-torch", tmp_path_factory.mktemp("env") / "site")
    return f"{REPO}{os.pathsep}{site}"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """recipes/tiny.yaml in a project of its own (its model and photos need no files)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text((REPO / "recipes" / "tiny.yaml").read_text())
    return recipe


def modelbuild(pythonpath: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELBUILD_CACHE_DIR"}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-S", "-m", "buildsys", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_environment_really_lacks_aimet(without_aimet: str, tmp_path: Path) -> None:
    probe = ("import importlib.metadata as m, importlib.util as u; "
             "print(u.find_spec('aimet_torch'), m.version('onnxruntime'))")
    env = {**os.environ, "PYTHONPATH": without_aimet}
    out = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.split()
    assert out[0] == "None" and out[1] == metadata.version("onnxruntime")


def test_a_build_needing_aimet_fails_at_plan_time_naming_the_extra(
        without_aimet: str, tiny: Path) -> None:
    project = tiny.parent
    result = modelbuild(without_aimet, project, tiny.name, "--report", "report.json")
    assert result.returncode == 2, result.stderr
    assert "aimet-torch (extra 'qualcomm'), needed by tiny/w8a16/quantize" in result.stderr
    assert "pip install 'modelbuild[qualcomm]'" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing ran: no stage output, no blob, no lock, no report
    assert sorted(p.name for p in project.iterdir()) in (["tiny.yaml"], [".cache", "tiny.yaml"])
    assert not [p for p in project.rglob("*") if p.is_file() and "cas" in p.parts]


def test_stages_that_need_no_missing_toolchain_still_plan(without_aimet: str,
                                                          tiny: Path) -> None:
    result = modelbuild(without_aimet, tiny.parent, tiny.name, "tiny/float/onnx/host/*",
                        "--plan")
    assert result.returncode == 0, result.stderr
    assert "tiny/float/onnx/host/validate" in result.stdout
    assert "aimet" not in result.stdout + result.stderr
