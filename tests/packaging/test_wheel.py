"""The wheel, not the source tree: built, installed into a fresh venv, run from elsewhere.

The fresh venv is made by this interpreter (`python -m venv`, so the same Python), gets the
wheel with `pip install --no-deps`, and sees the dependencies already installed here through a
`.pth` line naming this interpreter's site-packages. A `.pth` *line* adds that directory to
`sys.path` after the venv's own site-packages but does not run the `.pth` files inside it, so
the editable install of this checkout stays inactive: `import buildsys` can only find the wheel.
(`--system-site-packages` would not do: the dependencies are in a venv, not in the system.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
STEPS_RECIPE = """\
recipe: hello
steps:
  shout:
    cmd: ["{py}", "-c", "open('loud.txt','w').write(open('quiet.txt').read().upper())"]
    deps: [quiet.txt]
    outs: [loud.txt]
"""


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MODELBUILD_CACHE_DIR", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps` of a copy of the sources (a build in the tree would leave
    build/ and *.egg-info behind in it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO / "buildsys", source / "buildsys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", work / "dist", source)
    (built,) = (work / "dist").glob("modelbuild-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_bin(wheel: Path) -> Path:
    venv = wheel.parent.parent / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        wheel)
    fresh_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    shared_site = sysconfig.get_paths()["purelib"]
    (Path(fresh_site.stdout.strip()) / "shared_dependencies.pth").write_text(shared_site + "\n")
    return venv / "bin"


def test_the_wheel_ships_the_schema_license_and_declares_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = archive.read(f"modelbuild-{VERSION}.dist-info/METADATA").decode()
    assert "buildsys/schemas/recipe.schema.json" in names
    assert "buildsys/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert base and not [r for r in base if any(t in r for t in ("torch", "onnx", "qai"))]
    for extra in ("onnx", "torch", "qualcomm", "tflite", "all"):
        assert f"Provides-Extra: {extra}" in meta


def test_the_installed_wheel_validates_and_builds_outside_the_source_tree(
        venv_bin: Path, tmp_path: Path) -> None:
    modelbuild = venv_bin / "modelbuild"
    where = run(venv_bin / "python", "-c", "import buildsys; print(buildsys.__file__)",
                cwd=tmp_path).stdout
    assert where.startswith(str(venv_bin.parent)), where
    assert run(modelbuild, "--version", cwd=tmp_path).stdout.strip() == f"modelbuild {VERSION}"

    shutil.copy(REPO / "recipes" / "tiny.yaml", tmp_path / "tiny.yaml")
    assert "tiny.yaml: ok (6 variants" in run(modelbuild, "validate", "tiny.yaml",
                                               cwd=tmp_path).stdout

    (tmp_path / "hello.yaml").write_text(STEPS_RECIPE.format(py=sys.executable))
    (tmp_path / "quiet.txt").write_text("psst\n")
    run(modelbuild, "hello.yaml", "-q", cwd=tmp_path)
    assert (tmp_path / "build" / "hello" / "steps" / "shout" / "loud.txt").read_text() == "PSST\n"
    again = run(modelbuild, "hello.yaml", cwd=tmp_path)
    assert "0 built" in again.stderr
