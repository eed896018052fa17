"""A Keras model (a real .keras file made by TensorFlow in the test) as a model source: to
ONNX with tf2onnx, then the usual stages (onnxruntime quantization, ORT on the host), and to
TFLite with TensorFlow's converter, validated against the fp32 export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from buildsys.backends.tf_keras import is_available
from tests.conftest import Project

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_available(), reason="needs the tensorflow extra")]

MAKE_MODEL = """
import sys, keras
keras.utils.set_random_seed(0)
inp = keras.Input((32, 32, 3), batch_size=1, name="image")
x = keras.layers.Conv2D(16, 3, padding="same")(inp)
x = keras.layers.BatchNormalization()(x)
x = keras.layers.ReLU()(x)
x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
x = keras.layers.Conv2D(4, 1)(x)
out = keras.layers.UpSampling2D(2)(x)
keras.Model(inp, out).save(sys.argv[1])
"""

RECIPE = """\
recipe: kr
models:
  small:
    source: {keras: small.keras}
    inputs: {image: {shape: [1, 32, 32, 3]}}
    outputs: [logits]
    task: segmentation
datasets:
  photos:
    skimage: [astronaut, coffee, chelsea, rocket]
    preprocess: {convert: rgb, layout: NHWC}
    calibration: 2
    validation: 2
quantization:
  w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}
targets:
  onnx: {runtime: onnx}
  tflite: {runtime: tflite}
devices:
  host: {backend: host, profile: {warmup: 1, runs: 2}}
builds:
  - {model: small, quantization: [float, w8a8], target: onnx, device: host}
  - {model: small, quantization: float, target: tflite, device: host}
validate: {dataset: photos, psnr_min_db: 25}
"""


def test_a_keras_model_builds_to_onnx_and_tflite_and_validates(project: Project) -> None:
    subprocess.run([sys.executable, "-c", MAKE_MODEL, str(project.root / "small.keras")],
                   check=True, capture_output=True, timeout=300)
    project.write("recipe.yaml", RECIPE)
    report = project.build()
    assert report["ok"], report["process"].stderr
    rows = {r["id"]: r for r in json.loads(
        (project.root / "release/kr/index.json").read_text())["variants"]}
    assert rows["small/float/onnx/host"]["psnr_db"]["logits"] > 100
    assert 25 < rows["small/w8a8/onnx/host"]["psnr_db"]["logits"] < 60
    assert rows["small/float/tflite/host"]["psnr_db"]["logits"] > 80
    export = next(s for s in report["stages"] if s["id"] == "small/export")
    # tf2onnx's graph computes what Keras computes (checked on a probe input when exporting).
    assert export["metrics"]["keras_vs_onnx_max_abs_error"] < 1e-4
    assert export["metrics"]["converter"].startswith("tf2onnx ")

    # TensorFlow's constant folding follows the CPU's SIMD class: the converting stages say so.
    explain = project.run("recipe.yaml", "--explain", "small/export").stdout
    assert "tensorflow-cpu-kernels" in explain
    explain = project.run("recipe.yaml", "--explain", "small/float/tflite/compile").stdout
    assert "tensorflow-cpu-kernels" in explain

    import onnx

    model = onnx.load(str(project.root / "build/kr/small/export/model.onnx"))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
