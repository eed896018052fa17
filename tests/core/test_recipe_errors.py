"""Bad recipes: every problem reported at once, each with file:line:col and the key path."""

from __future__ import annotations

import pytest

from buildsys.errors import RecipeError
from buildsys.recipe.load import load_recipe
from tests.conftest import Project

GOOD_STEPS = """\
recipe: demo
steps:
  make:
    cmd: ["python3", "-c", "open('a.txt', 'w').write('a')"]
    outs: [a.txt]
"""


def problems_of(project: Project, text: str) -> list[str]:
    path = project.write("recipe.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return info.value.problems


def test_unknown_key_names_line_and_suggests(project: Project) -> None:
    problems = problems_of(project, GOOD_STEPS.replace("    outs:", "    outz: [b]\n    outs:"))
    assert len(problems) == 1
    assert "recipe.yaml:5:5" in problems[0]
    assert "steps.make.outz" in problems[0]
    assert "did you mean 'outs'" in problems[0]


def test_several_errors_at_once(project: Project) -> None:
    text = """\
    recipe: demo
    modles: {}
    settings: {opset: "eighteen"}
    steps:
      make: {cmd: 5, outs: [a.txt]}
    """
    problems = problems_of(project, text)
    joined = "\n".join(problems)
    assert len(problems) == 3, joined
    assert "modles" in joined and "did you mean 'models'" in joined
    assert "settings.opset" in joined and "expected integer" in joined
    assert "steps.make.cmd" in joined


def test_undeclared_references_and_impossible_pairs(project: Project) -> None:
    text = """\
    recipe: demo
    models:
      net:
        source: {python: "buildsys.zoo.tiny:tiny_convnet"}
        inputs: {image: {shape: [1, 3, 8, 8]}}
    targets:
      onnx: {runtime: onnx}
      qnn: {runtime: qnn_context_binary}
    devices:
      host: {backend: host}
    builds:
      - {model: [net, nte], quantization: [float, w8a9], target: [onnx, qnn], device: host}
    """
    joined = "\n".join(problems_of(project, text))
    assert "model 'nte' is not declared under models; did you mean 'net'?" in joined
    assert "quantization 'w8a9' is not declared" in joined
    assert "cannot run target 'qnn'" in joined
    assert "recipe.yaml:12:" in joined


def test_duplicate_key_is_an_error(project: Project) -> None:
    text = GOOD_STEPS + """\
  make:
    cmd: ["true"]
    outs: [b.txt]
"""
    problems = problems_of(project, text)
    assert any("duplicate key 'steps.make'" in p and "line 3" in p for p in problems)


def test_missing_files_are_reported(project: Project) -> None:
    text = """\
    recipe: demo
    models:
      net:
        source: {python: "buildsys.zoo.tiny:tiny_convnet", weights: missing.pt}
        inputs: {image: {shape: [1, 3, 8, 8]}}
    datasets:
      photos: {images: "data/*.png", calibration: 2}
    steps:
      s: {cmd: ["true"], deps: [nothere.txt, ../../etc/passwd], outs: [../out.txt]}
    """
    joined = "\n".join(problems_of(project, text))
    assert "missing.pt' does not exist" in joined
    assert "glob 'data/*.png' matches no file" in joined
    assert "'nothere.txt' is neither a file" in joined
    assert "'../../etc/passwd' must be a relative path inside the project" in joined
    assert "output '../out.txt' must be a relative path inside the project" in joined


def test_yaml_syntax_error_has_position(project: Project) -> None:
    problems = problems_of(project, "recipe: demo\nsteps: [unclosed\n")
    assert len(problems) == 1 and "YAML syntax error" in problems[0]
    assert "recipe.yaml:3" in problems[0] or "recipe.yaml:2" in problems[0]


def test_matrix_expansion_with_exclude(project: Project) -> None:
    text = """\
    recipe: demo
    models:
      a: {source: {python: "buildsys.zoo.tiny:tiny_convnet"}, inputs: {x: {shape: [1, 3, 8, 8]}}}
      b: {source: {python: "buildsys.zoo.tiny:tiny_convnet"}, inputs: {x: {shape: [1, 3, 8, 8]}}}
    targets: {onnx: {runtime: onnx}}
    devices: {host: {backend: host}, cpu2: {backend: host}}
    builds:
      - model: [a, b]
        quantization: float
        target: onnx
        device: [host, cpu2]
        exclude: [{model: b, device: cpu2}]
    """
    recipe = load_recipe(project.write("recipe.yaml", text))
    assert [v.id for v in recipe.variants] == [
        "a/float/onnx/host", "a/float/onnx/cpu2", "b/float/onnx/host"]


def test_validate_command_exit_codes(project: Project) -> None:
    project.write("recipe.yaml", GOOD_STEPS)
    ok = project.run("validate", "recipe.yaml")
    assert "ok" in ok.stdout
    project.write("bad.yaml", GOOD_STEPS.replace("cmd:", "cmdd:"))
    bad = project.run("validate", "bad.yaml", check=False)
    assert bad.returncode == 2
    assert "bad.yaml:4:5" in bad.stderr and "cmdd" in bad.stderr
    assert not (project.root / ".cache").exists()  # nothing written


def test_link_needs_a_context_binary_target(project: Project) -> None:
    text = """\
    recipe: demo
    models:
      net:
        source: {python: "buildsys.zoo.tiny:tiny_convnet"}
        inputs: {image: {shape: [1, 3, 8, 8]}}
    targets:
      tfl: {runtime: tflite, link: true}
      qnn: {runtime: qnn_context_binary, link_options: "--x"}
    devices:
      s23: {backend: aihub, name: "Samsung Galaxy S23"}
    builds:
      - {model: net, quantization: float, target: [tfl, qnn], device: s23}
    """
    problems = problems_of(project, text)
    joined = "\n".join(problems)
    assert len(problems) == 2, joined
    assert "recipe.yaml:7:" in joined and "targets.tfl.link" in joined
    assert "needs runtime qnn_context_binary, not tflite" in joined
    assert "targets.qnn.link_options: link_options without link: true" in joined
