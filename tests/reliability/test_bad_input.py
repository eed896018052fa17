"""Bad recipes through the real CLI: a message with file:line:col and the key, exit code 2, and
nothing written — no store, no build directory, no lock, nothing outside the project.

(tests/core/test_recipe_errors.py checks the loader's messages; here the promise is about the
command: every entry point refuses before touching the disk.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.reliability.helpers import PY

STEP = f"""\
recipe: bad
steps:
  make:
    cmd: [{json.dumps(PY)}, "-c", "open('a.txt', 'w').write('a')"]
    outs: [a.txt]
"""

MODEL = """\
recipe: bad
models:
  net:
    source: {python: "buildsys.zoo.tiny:tiny_convnet"}
    inputs: {image: {shape: [1, 3, 16, 16]}}
targets:
  onnx: {runtime: onnx}
  qnn: {runtime: qnn_context_binary}
devices:
  host: {backend: host}
  sim: {backend: qnn-htp-simulator, chipset: sm8550}
builds:
  - {model: net, quantization: float, target: onnx, device: host}
"""

# name → (recipe text, the key path the message must name, words it must contain)
CASES = {
    "output escapes the project": (
        STEP.replace("outs: [a.txt]", "outs: [../../etc/evil.txt]"),
        "steps.make.outs[0]", "must be a relative path inside the project"),
    "absolute output path": (
        STEP.replace("outs: [a.txt]", "outs: [/tmp/evil.txt]"),
        "steps.make.outs[0]", "must be a relative path inside the project"),
    "input escapes the project": (
        STEP.replace("outs: [a.txt]", "deps: [../../etc/passwd]\n    outs: [a.txt]"),
        "steps.make.deps[0]", "must be a relative path inside the project"),
    "build_dir escapes the project": (
        STEP + "settings: {build_dir: ../../outside-build}\n",
        "settings.build_dir", "inside the project"),
    "absolute build_dir": (
        STEP + "settings: {build_dir: /tmp/modelbuild-outside}\n",
        "settings.build_dir", "inside the project"),
    "dist_dir escapes the project": (
        MODEL + "settings: {dist_dir: ../../outside-dist}\n",
        "settings.dist_dir", "inside the project"),
    "device cannot run the target": (
        MODEL.replace("target: onnx, device: host", "target: qnn, device: host"),
        "builds[0]", "cannot run target 'qnn'"),
    "images glob matches nothing": (
        MODEL.replace("targets:", "datasets:\n  photos: {images: \"data/*.png\", "
                      "calibration: 2}\ntargets:"),
        "datasets.photos.images", "matches no file"),
    "unknown key": (
        STEP.replace("outs:", "outz: [b]\n    outs:"),
        "steps.make.outz", "did you mean 'outs'"),
    "not a mapping": ("- just\n- a list\n", "", "a recipe is a mapping"),
    "yaml syntax error": (STEP + "  broken: [unclosed\n", "", "YAML syntax error"),
    "python object tag": (STEP.replace("outs: [a.txt]", "outs: !!python/object/apply:os.system "
                                       "[\"touch pwned\"]"),
                          "steps.make.outs", "unsupported YAML tag"),
    "unknown tag": (STEP.replace("[a.txt]", "[!local a.txt]"), "steps.make.outs[0]",
                    "unsupported YAML tag '!local'"),
    "merge key": (STEP + "base: &b {cmd: [x], outs: [b.txt]}\nmore: {<<: *b}\n", "more",
                  "merge keys (<<) are not supported"),
    "alias that contains itself": (STEP + "loop: &l [*l]\n", "loop[0]", "contains itself"),
    "nested too deeply": (STEP + "deep: " + "[" * 200 + "]" * 200 + "\n", "deep[0]",
                          "nested more than"),
    "billion laughs": (STEP + "".join(
        f"l{i}: &a{i} [" + ",".join([f"*a{i - 1}" if i else "x"] * 10) + "]\n"
        for i in range(9)), "", "expands to more than"),
}


def nothing_written(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("recipe.yaml",))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_is_refused_before_anything_is_written(project: Project, case: str) -> None:
    text, key, words = CASES[case]
    project.write("recipe.yaml", text)
    for args in (["recipe.yaml"], ["recipe.yaml", "--plan"], ["validate", "recipe.yaml"],
                 ["graph", "recipe.yaml"]):
        process = project.run(*args, check=False)
        assert process.returncode == 2, (args, process.stderr)
        assert "Traceback" not in process.stderr
        assert re.search(r"recipe\.yaml:\d+:\d+: ", process.stderr), process.stderr
        assert key in process.stderr and words in process.stderr, process.stderr
    assert nothing_written(project.root) == []
    assert not (project.root.parent / "outside-build").exists()
    assert not Path("/tmp/modelbuild-outside").exists()


def test_binary_file_given_as_the_recipe(project: Project) -> None:
    (project.root / "recipe.yaml").write_bytes(b"recipe: x\n\x89PNG\r\n\x1a\n\xff\x00")
    process = project.run("recipe.yaml", check=False)
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    assert "recipe.yaml:2:1: not UTF-8 text" in process.stderr
    assert nothing_written(project.root) == []


def test_missing_recipe_file(project: Project) -> None:
    process = project.run("nothere.yaml", check=False)
    assert process.returncode == 2 and "nothere.yaml" in process.stderr
    assert nothing_written(project.root) == []


def test_bad_command_line_is_exit_2(project: Project) -> None:
    project.write("recipe.yaml", STEP)
    for args in (["recipe.yaml", "--jobs", "-3"], ["recipe.yaml", "--no-such-flag"],
                 ["recipe.yaml", "--explain", "steps/nope"]):
        process = project.run(*args, check=False)
        assert process.returncode == 2, (args, process.stderr)
        assert "Traceback" not in process.stderr
    assert not (project.root / "build").exists()


def test_unusable_cache_directory_is_a_clear_error(project: Project, tmp_path: Path) -> None:
    project.write("recipe.yaml", STEP)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    process = project.run("recipe.yaml", "--cache-dir", str(blocker / "cache"), check=False)
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr and "a-file" in process.stderr, process.stderr
    assert not (project.root / "build").exists()
