"""FFNet through the whole local pipeline at a small resolution (the same modules, the same
stages as recipes/ffnet.yaml; 128×256 keeps the HTP simulator to about a second a run)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Project, statuses

pytestmark = pytest.mark.slow

RECIPE = """\
recipe: ffnet_small
models:
  ffnet_78s_lowres:
    source: {python: "buildsys.zoo.ffnet:ffnet_78s_lowres", seed: 0}
    inputs: {image: {shape: [1, 3, 128, 256]}}
    outputs: [logits]
    task: segmentation
datasets:
  street:
    skimage: [astronaut, coffee, motorcycle_left]
    preprocess: {convert: rgb}
    calibration: 2
    validation: 1
quantization:
  w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: street}
targets:
  onnx: {runtime: onnx}
  qnn: {runtime: qnn_context_binary}
devices:
  host: {backend: host, profile: {warmup: 1, runs: 2}}
  sim: {backend: qnn-htp-simulator, chipset: sm8550}
builds:
  - {model: ffnet_78s_lowres, quantization: [float, w8a8], target: onnx, device: host}
  - {model: ffnet_78s_lowres, quantization: w8a8, target: qnn, device: sim}
validate: {dataset: street, psnr_min_db: 20}
"""


def test_small_ffnet_builds_validates_and_packages(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build()
    assert report["ok"], report["process"].stderr
    index = json.loads((project.root / "release" / "ffnet_small" / "index.json").read_text())
    rows = {r["id"]: r for r in index["variants"]}
    assert set(rows) == {"ffnet_78s_lowres/float/onnx/host", "ffnet_78s_lowres/w8a8/onnx/host",
                         "ffnet_78s_lowres/w8a8/qnn/sim"}
    # 26.8 M parameters: int8 weights are close to four times smaller than float
    assert 3.5 < rows["ffnet_78s_lowres/w8a8/onnx/host"]["size_ratio_vs_float"] < 4.2
    assert rows["ffnet_78s_lowres/float/onnx/host"]["psnr_db"]["logits"] > 100
    assert rows["ffnet_78s_lowres/w8a8/qnn/sim"]["psnr_db"]["logits"] > 20
    export = next(s for s in report["stages"] if s["id"] == "ffnet_78s_lowres/export")
    assert export["metrics"]["parameters"] == 26_828_435
    assert statuses(project.build(), "built") == set()
