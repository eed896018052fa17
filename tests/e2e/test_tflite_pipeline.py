"""LiteRT: the float torch model → .tflite, run and profiled on the host CPU."""

from __future__ import annotations

import json

import pytest

from buildsys.backends.tflite import is_available
from tests.conftest import Project

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_available(), reason="litert-torch not installed")]

RECIPE = """\
recipe: tiny_tflite
models:
  tiny:
    source: {python: "buildsys.zoo.tiny:tiny_convnet", seed: 0}
    inputs: {image: {shape: [1, 3, 64, 64]}}
    outputs: [logits]
    task: segmentation
datasets:
  photos: {random: {seed: 1}, calibration: 1, validation: 2}
targets:
  tflite: {runtime: tflite}
devices:
  host: {backend: host, profile: {warmup: 1, runs: 3}}
builds:
  - {model: tiny, quantization: float, target: tflite, device: host}
validate: {dataset: photos, psnr_min_db: 60}
"""


def test_tflite_variant_builds_and_matches_torch(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build()
    assert report["ok"], report["process"].stderr
    index = project.root / "release" / "tiny_tflite" / "index.json"
    row = json.loads(index.read_text())["variants"][0]
    assert row["psnr_db"]["logits"] > 60
    assert "LiteRT" in row["latency_where"]
    compiled = project.root / "build/tiny_tflite/tiny/float/tflite/compile/model.tflite"
    assert compiled.stat().st_size > 0
