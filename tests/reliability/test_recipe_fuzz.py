"""Property-based tests of the recipe loader: whatever the document — random YAML, random text,
or a mutated example recipe — loading raises nothing but RecipeError, and every problem names
the recipe file. A recipe that loads must also expand into a stage graph without crashing
(the loader's checks are what the planner relies on).

Derandomized (the same examples on every run, so CI is stable); MODELBUILD_FUZZ_EXAMPLES=2000
searches harder, with fresh random examples each run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.errors import RecipeError, StageError
from buildsys.plan.graph import build_graph
from buildsys.recipe.load import load_recipe
from tests.conftest import REPO

EXAMPLES = int(os.environ.get("MODELBUILD_FUZZ_EXAMPLES", "120"))
SEARCH = "MODELBUILD_FUZZ_EXAMPLES" in os.environ  # a deliberate search: new examples each run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not SEARCH, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RECIPES = sorted([*REPO.glob("recipes/*.yaml"), *REPO.glob("recipes/*/*.yaml")])

# Words the loader and the planner look for, so random documents reach past the first check.
WORDS = ["recipe", "models", "datasets", "quantization", "targets", "devices", "builds", "steps",
         "settings", "validate", "source", "python", "weights", "onnx", "torchscript", "seed",
         "inputs", "outputs", "shape", "dtype", "images", "skimage", "npz", "calibration",
         "validation", "engine", "runtime", "backend", "chipset", "model", "target", "device",
         "exclude", "group", "cmd", "deps", "outs", "timeout", "shell", "env", "build_dir",
         "dist_dir", "opset", "timeouts", "psnr_min_db", "float", "w8a8", "host", "tiny",
         "qnn_context_binary", "onnxruntime", "aimet", "sm8550", "qnn-htp-simulator",
         "buildsys.zoo.tiny:tiny_convnet", "../../etc", "/tmp", "a.txt", "*.png", "int8"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS),
    st.text(max_size=20))
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(keys, inner, max_size=6)),
    max_leaves=40)


def check(path: Path, text: str | bytes, expand: bool = True) -> None:
    """Load `text` as a recipe: success, or a RecipeError whose problems name the file."""
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        assert exc.problems, "a RecipeError without problems"
        for problem in exc.problems:
            assert isinstance(problem, str) and path.name in problem, problem
        return
    if expand:  # a recipe that loads expands; a problem found then is a recipe problem
        with contextlib.suppress(RecipeError, StageError):
            build_graph(recipe)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A model's source files are found and parsed once per process (plan/sources.py), so
    # expanding the same model again in every example costs nothing more.
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(document=st.dictionaries(keys, values, max_size=8))
def test_random_yaml_mappings(workdir: Path, document: dict[str, Any]) -> None:
    check(workdir / "recipe.yaml", yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{},'\"&*!|>#%@ \t\n0.\\")) |
                    st.characters(), max_size=200))
def test_random_text(workdir: Path, text: str) -> None:
    check(workdir / "recipe.yaml", text)  # lone surrogates make invalid UTF-8: also refused


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes(workdir: Path, data: bytes) -> None:
    check(workdir / "recipe.yaml", data)


# --- mutations of the example recipes ------------------------------------------------------

def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(paths_in(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(paths_in(v, (*prefix, i)))
    return out


def mutate(data: Any, path: tuple[Any, ...], op: str, new: Any, new_key: str) -> Any:
    if not path:
        return new if op == "replace" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = new
    elif op == "rename" and isinstance(parent, dict):
        parent[new_key] = parent.pop(last)
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, parent[last])
    elif op == "wrap":
        parent[last] = [parent[last]]
    return data


@pytest.mark.parametrize("example", RECIPES, ids=[p.stem for p in RECIPES])
def test_example_recipes_load(example: Path) -> None:
    """The unmutated examples load (so the mutations below start from a valid recipe)."""
    build_graph(load_recipe(example))


@pytest.mark.parametrize("example", RECIPES, ids=[p.stem for p in RECIPES])
@FUZZ
@given(data=st.data())
def test_structural_mutations_of_examples(workdir: Path, example: Path,
                                          data: st.DataObject) -> None:
    document = yaml.safe_load(example.read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        candidates = paths_in(document)
        path = data.draw(st.sampled_from(candidates), label="path")
        op = data.draw(st.sampled_from(["delete", "replace", "rename", "duplicate", "wrap"]),
                       label="op")
        if op == "delete" and not path:
            continue
        document = mutate(document, path, op, data.draw(values, label="new"),
                          data.draw(keys, label="key"))
    check(workdir / f"{example.stem}.yaml",
          yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


@pytest.mark.parametrize("example", RECIPES, ids=[p.stem for p in RECIPES])
@FUZZ
@given(data=st.data())
def test_text_mutations_of_examples(workdir: Path, example: Path,
                                    data: st.DataObject) -> None:
    lines = example.read_text().splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        op = data.draw(st.sampled_from(["drop", "dup", "swap", "insert", "indent", "cut"]),
                       label="op")
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1), label="other")
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            pos = data.draw(st.integers(0, len(lines[i])), label="pos")
            lines[i] = lines[i][:pos] + data.draw(st.text(max_size=6), label="chars") + \
                lines[i][pos:]
        elif op == "indent":
            lines[i] = "  " + lines[i]
        else:
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])), label="pos")]
    check(workdir / f"{example.stem}.yaml", "".join(lines))
