"""What the package declares: the schema it ships, the extras it offers, its version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from buildsys.plan.graph import build_graph
from buildsys.recipe.load import load_recipe
from buildsys.recipe.schema import recipe_schema
from buildsys.stages import stage_class
from buildsys.toolchain import EXTRA_FOR

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TOOLCHAIN_EXTRAS = {"onnx", "torch", "qualcomm", "tflite", "report", "ncnn", "executorch",
                    "tensorrt", "tensorflow", "dask"}
# Extras `all` leaves out, and why (pyproject.toml says it too).
NOT_IN_ALL = {"tensorrt": "NVIDIA's wheels download from pypi.nvidia.com; GPU machines only"}


def _name(requirement: str) -> str:
    """'torch>=2.14,<2.15' -> 'torch'; 'modelbuild[onnx]' -> 'modelbuild'."""
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_schema_editors_read_is_the_one_the_package_ships() -> None:
    shipped = REPO / "buildsys" / "schemas" / "recipe.schema.json"
    for_editors = REPO / "schemas" / "recipe.schema.json"
    assert shipped.read_bytes() == for_editors.read_bytes(), (
        "schemas/recipe.schema.json and buildsys/schemas/recipe.schema.json differ: edit one, "
        "copy it over the other")
    assert recipe_schema() == json.loads(shipped.read_text())


def test_every_data_file_of_the_package_is_declared_as_package_data() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["buildsys"]
    data_files = [p.relative_to(REPO / "buildsys") for p in (REPO / "buildsys").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data_files, "the package has data files (at least the schema)"
    for path in data_files:
        assert any(path.match(pattern) for pattern in patterns), f"{path} is not package data"


def test_the_engine_installs_no_toolchain_and_declares_what_it_imports() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert base == {"pyyaml", "jsonschema", "networkx", "diskcache", "rich", "obstore"}
    assert not base & set(EXTRA_FOR)


def test_each_toolchain_is_installed_by_the_extra_the_planner_names() -> None:
    extras = PROJECT["optional-dependencies"]
    for distribution, extra in EXTRA_FOR.items():
        assert distribution in {_name(r) for r in extras[extra]}, (
            f"{distribution}: the planner tells users to install modelbuild[{extra}], "
            f"which does not list it")
    for extra in TOOLCHAIN_EXTRAS:
        for requirement in extras[extra]:
            name = _name(requirement)
            assert name == "modelbuild" or EXTRA_FOR.get(name) == extra, (
                f"{requirement} in extra {extra!r} is not in toolchain.EXTRA_FOR")
    in_all = {e for r in extras["all"] for e in re.findall(r"\[(.*)\]", r)[0].split(",")}
    assert in_all == TOOLCHAIN_EXTRAS - set(NOT_IN_ALL)
    assert any(_name(r) == "torch" and "<2.15" in r for r in extras["torch"])


def test_every_toolchain_a_stage_of_the_example_recipes_imports_has_an_extra() -> None:
    for recipe in ("tiny.yaml", "ffnet.yaml", "examples/aihub_tiny.yaml"):
        graph = build_graph(load_recipe(REPO / "recipes" / recipe, frozenset({"all"})))
        for stage_id, data in graph.nodes(data=True):
            node = data["node"]
            for distribution in stage_class(node.kind).requirements(node.params):
                assert distribution in EXTRA_FOR, f"{recipe}: {stage_id} needs {distribution}"


def test_version_is_the_installed_distributions() -> None:
    result = subprocess.run([sys.executable, "-m", "buildsys", "--version"],
                            capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == f"modelbuild {metadata.version('modelbuild')}"
    assert metadata.version("modelbuild") == PROJECT["version"]
