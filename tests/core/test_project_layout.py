"""Where a build's files go: the store, build/<recipe>/ and release/<recipe>/ at the project
root (the nearest directory above the recipe holding .git, pyproject.toml or modelbuild.toml);
the lock beside the recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from buildsys.project import find_project_root
from tests.conftest import Project

PY = sys.executable
STEP_RECIPE = f"""\
recipe: {{name}}
steps:
  hello:
    cmd: ["{PY}", "-c", "open('hi.txt', 'w').write('hi')"]
    outs: [hi.txt]
"""


@pytest.mark.parametrize("marker", [".git", "pyproject.toml", "modelbuild.toml"])
def test_the_root_is_the_nearest_directory_with_a_marker(tmp_path: Path, marker: str) -> None:
    (tmp_path / "outer" / "inner" / "recipes").mkdir(parents=True)
    (tmp_path / "outer" / "pyproject.toml").touch()
    if marker == ".git":
        (tmp_path / "outer" / "inner" / ".git").mkdir()
    else:
        (tmp_path / "outer" / "inner" / marker).touch()
    assert find_project_root(tmp_path / "outer" / "inner" / "recipes") == \
        tmp_path / "outer" / "inner"


def test_without_a_marker_the_root_is_the_recipes_directory(tmp_path: Path) -> None:
    assert find_project_root(tmp_path) == tmp_path.resolve()


def test_two_recipes_of_a_project_share_its_store_and_get_a_folder_each(
        project: Project) -> None:
    project.write("pyproject.toml", "")
    project.write("recipes/one.yaml", STEP_RECIPE.format(name="one"))
    project.write("recipes/two.yaml", STEP_RECIPE.format(name="two"))
    project.run("recipes/one.yaml", "-q")
    second = project.run("recipes/two.yaml")  # same step, same key: cached in the shared store
    assert "0 built, 1 cached" in second.stderr
    for name in ("one", "two"):
        assert (project.root / "build" / name / "steps/hello/hi.txt").read_text() == "hi"
        assert (project.root / "recipes" / f"{name}.lock").is_file()  # beside its recipe
    assert (project.root / ".cache").is_dir()
    leftovers = {p.name for p in (project.root / "recipes").iterdir()}
    assert leftovers == {"one.yaml", "two.yaml", "one.lock", "two.lock"}


def test_commands_from_a_subdirectory_use_the_projects_store(project: Project) -> None:
    project.write("modelbuild.toml", "")
    project.write("recipes/one.yaml", STEP_RECIPE.format(name="one"))
    project.run("recipes/one.yaml", "-q")
    info = project.run("cache", "info", cwd=project.root / "recipes").stdout
    assert str(project.root / ".cache") in info
    assert "records  1" in info


def test_cache_dir_and_the_environment_still_choose_the_store(project: Project) -> None:
    project.write("pyproject.toml", "")
    project.write("recipes/one.yaml", STEP_RECIPE.format(name="one"))
    project.run("recipes/one.yaml", "-q", "--cache-dir", "elsewhere")
    assert (project.root / "elsewhere" / "cas").is_dir()
    project.run("recipes/one.yaml", "-q", env={"MODELBUILD_CACHE_DIR": str(project.root / "e")})
    assert (project.root / "e" / "cas").is_dir()
    assert not (project.root / ".cache").exists()


def test_settings_still_place_build_and_release_beside_the_recipe(project: Project) -> None:
    project.write("pyproject.toml", "")
    project.write("recipes/one.yaml", STEP_RECIPE.format(name="one")
                  + "settings: {build_dir: out}\n")
    project.run("recipes/one.yaml", "-q")
    assert (project.root / "recipes/out/steps/hello/hi.txt").read_text() == "hi"
    assert not (project.root / "build").exists()


def test_gc_keeps_what_any_recipe_of_the_project_locked(project: Project) -> None:
    project.write("pyproject.toml", "")
    project.write("uv.lock", "version = 1\n")  # not a recipe's lock: ignored
    project.write("recipes/one.yaml", STEP_RECIPE.format(name="one"))
    project.write("examples/deep/two.yaml", STEP_RECIPE.format(name="two").replace("hi", "ho"))
    project.run("recipes/one.yaml", "-q")
    project.run("examples/deep/two.yaml", "-q")
    project.run("cache", "gc", cwd=project.root / "examples")
    info = project.run("cache", "info").stdout
    assert "records  2" in info, info
    (project.root / "examples/deep/two.lock").unlink()
    project.run("cache", "gc")
    assert "records  1" in project.run("cache", "info").stdout
