"""Bad inputs to the model stages (real torch, ONNX; tiny nets): each fails with a message that
names the file or the key, exit code 1 (found while running: the stage fails) or 2 (found at
load time: nothing runs), and no record of the failed stage is left in the store.

Also untrusted weights: a pickle payload in a weights file is refused and its code never
runs (weights are read with torch.load(weights_only=True)).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.reliability.helpers import stored_records

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("buildsys.zoo.tiny") is None,
    reason="buildsys.zoo.tiny (the tiny test models) is not in this checkout yet")

RECIPE = """\
recipe: bad
models:
  tiny:
    source: {python: "buildsys.zoo.tiny:tiny_convnet", seed: 0, weights: weights.pt}
    inputs: {image: {shape: [1, 3, 16, 16]}}
    outputs: [logits]
targets: {onnx: {runtime: onnx}}
devices: {host: {backend: host}}
builds:
  - {model: tiny, quantization: float, target: onnx, device: host}
"""


def save_torch(path: Path, value: Any) -> None:
    import torch

    torch.save(value, path)


def tiny_state(**kwargs: Any) -> dict[str, Any]:
    from buildsys.zoo.tiny import tiny_convnet

    return tiny_convnet(**kwargs).state_dict()


def export_fails(project: Project, *words: str) -> str:
    """Build the export stage only; it must fail alone, with `words` in its message."""
    report = project.build("recipe.yaml", "tiny/export", check=False)
    process = report["process"]
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    failed = {s["id"]: s["error"] for s in report["stages"] if s["status"] == "failed"}
    assert list(failed) == ["tiny/export"], report["stages"]
    for word in words:
        assert word in failed["tiny/export"], failed["tiny/export"]
    assert ".cache/tmp" not in failed["tiny/export"]  # the user's file, not a scratch copy
    assert "tiny/export" not in stored_records(project.cache)
    assert not (project.root / "build" / "bad" / "tiny" / "export").exists()
    return failed["tiny/export"]


def load_error(project: Project, *words: str) -> str:
    """`modelbuild` stops at load time: exit 2, file:line:col, nothing written."""
    process = project.run("recipe.yaml", check=False)
    assert process.returncode == 2, process.stderr
    for word in words:
        assert word in process.stderr, process.stderr
    assert not any((project.root / name).exists() for name in
                   (".cache", "build", "release", "recipe.lock"))
    return process.stderr


@pytest.fixture
def model_project(project: Project) -> Project:
    project.write("recipe.yaml", RECIPE)
    return project


def test_weights_that_are_not_a_state_dict(model_project: Project) -> None:
    save_torch(model_project.root / "weights.pt", [1, 2, 3])
    export_fails(model_project, "weights.pt", "not a state dict")


def test_weights_file_that_is_not_a_torch_file(model_project: Project) -> None:
    model_project.write("weights.pt", "these are not weights\n")
    export_fails(model_project, "weights.pt")


def test_weights_of_the_wrong_shapes(model_project: Project) -> None:
    save_torch(model_project.root / "weights.pt", tiny_state(width=16))
    export_fails(model_project, "weights.pt", "shape mismatch", "features.0.0.weight")


def test_weights_with_missing_keys(model_project: Project) -> None:
    state = tiny_state()
    del state[next(iter(state))]
    save_torch(model_project.root / "weights.pt", state)
    export_fails(model_project, "weights.pt", "missing")


def test_good_weights_are_really_loaded(model_project: Project) -> None:
    """The control: weights of another seed load and change the exported model's bytes."""
    save_torch(model_project.root / "weights.pt", tiny_state(seed=1))
    first = model_project.build("recipe.yaml", "tiny/export")
    save_torch(model_project.root / "weights.pt", tiny_state(seed=2))
    second = model_project.build("recipe.yaml", "tiny/export")
    digest = [next(s for s in r["stages"] if s["id"] == "tiny/export")["outputs"]["model.onnx"]
              ["digest"] for r in (first, second)]
    assert digest[0] != digest[1]


def test_onnx_source_that_is_not_onnx(project: Project) -> None:
    project.write("recipe.yaml", RECIPE.replace(
        '{python: "buildsys.zoo.tiny:tiny_convnet", seed: 0, weights: weights.pt}',
        "{onnx: model.onnx}"))
    project.write("model.onnx", "<html>404 not found</html>\n")
    export_fails(project, "model.onnx", "not a valid ONNX model")


def test_input_with_the_wrong_channel_count(model_project: Project) -> None:
    save_torch(model_project.root / "weights.pt", tiny_state())
    model_project.write("recipe.yaml", RECIPE.replace("[1, 3, 16, 16]", "[1, 1, 16, 16]"))
    export_fails(model_project, "TinyConvNet", "3 channels", "[1, 1, 16, 16]")


def test_input_shape_the_model_rejects(model_project: Project) -> None:
    save_torch(model_project.root / "weights.pt", tiny_state())
    model_project.write("recipe.yaml", RECIPE.replace("[1, 3, 16, 16]", "[1, 3]"))
    export_fails(model_project, "TinyConvNet", "[1, 3]")


def test_dataset_smaller_than_the_calibration_count(model_project: Project) -> None:
    from PIL import Image

    save_torch(model_project.root / "weights.pt", tiny_state())
    (model_project.root / "data").mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 40, 10, 200)).save(model_project.root / f"data/{i}.png")
    model_project.write("recipe.yaml", RECIPE.replace("targets:", """\
datasets:
  photos: {images: "data/*.png", calibration: 4, validation: 1}
quantization:
  w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}
targets:""").replace("quantization: float", "quantization: w8a8"))
    stderr = load_error(model_project, "recipe.yaml:", "datasets.photos.images")
    assert "2 " in stderr and "4" in stderr  # says how many there are and how many it needs


# --- untrusted weights files ---------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrapping", ["torch_save_of_payload", "state_dict_with_payload",
                                      "plain_pickle"])
def test_pickle_payload_in_weights_is_refused_and_never_runs(
        model_project: Project, tmp_path: Path, wrapping: str) -> None:
    marker = tmp_path / "payload-ran"
    weights = model_project.root / "weights.pt"
    if wrapping == "torch_save_of_payload":
        save_torch(weights, _Payload(marker))
    elif wrapping == "state_dict_with_payload":
        save_torch(weights, {**tiny_state(), "features.0.0.weight": _Payload(marker)})
    else:
        weights.write_bytes(pickle.dumps(_Payload(marker)))
    assert not marker.exists()
    export_fails(model_project, "weights.pt", "refused")
    assert not marker.exists(), "the pickle payload ran"
