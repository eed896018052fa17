"""What a build runs and what it says about it: on-demand stages (capture) run only when asked
for, and a stage that was never built says "new" rather than blaming an upstream stage."""

from __future__ import annotations

import json
import sys

from tests.conftest import Project

PY = sys.executable

MODEL_RECIPE = """\
recipe: demand
models:
  tiny:
    source: {python: "buildsys.zoo.tiny:tiny_convnet"}
    inputs: {x: {shape: [1, 3, 8, 8]}}
targets: {onnx: {runtime: onnx}}
devices: {host: {backend: host}}
builds:
  - {model: tiny, quantization: float, target: onnx, device: host}
"""


def plan(project: Project, *args: str) -> dict[str, dict[str, str]]:
    result = project.run("recipe.yaml", "--plan", "--json", *args)
    return {s["id"]: s for s in json.loads(result.stdout)["stages"]}


def test_capture_runs_only_when_a_pattern_names_it(project: Project) -> None:
    project.write("recipe.yaml", MODEL_RECIPE)
    default = plan(project)
    assert "tiny/export" in default and "tiny/capture" not in default
    assert "tiny/capture" not in plan(project, "tiny/*")  # a wildcard does not ask for it
    assert set(plan(project, "*/capture")) == {"tiny/capture"}
    assert set(plan(project, "tiny/capture")) == {"tiny/capture"}
    assert "tiny/capture" in plan(project, "tiny/capture", "tiny/float/*")
    graph = project.run("graph", "recipe.yaml").stdout
    assert "tiny/capture" in graph  # still part of the recipe's graph


STEPS = f"""\
recipe: reasons
steps:
  first:
    cmd: ["{PY}", "-c", "open('a.txt','w').write(open('src.txt').read())"]
    deps: [src.txt]
    outs: [a.txt]
  second:
    cmd: ["{PY}", "-c", "open('b.txt','w').write(open('a.txt').read())"]
    deps: [a.txt]
    outs: [b.txt]
"""


def test_a_never_built_stage_is_new_and_a_built_one_waits_on_its_input(project: Project
                                                                        ) -> None:
    project.write("recipe.yaml", STEPS)
    project.write("src.txt", "1")
    cold = plan(project)
    assert {s["reason"] for s in cold.values()} == {"new"}
    project.run("recipe.yaml", "steps/first")  # only the first: the second is still new
    assert plan(project)["steps/second"]["reason"] == "new"
    project.run("recipe.yaml")
    project.write("src.txt", "2")
    changed = plan(project)
    assert changed["steps/first"]["reason"].startswith("input changed: ")
    assert changed["steps/second"]["reason"] == "input changed: steps/first runs first"
