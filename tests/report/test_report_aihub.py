"""AI Hub variants on the page: not packaged (so not in the release index), but their
on-device latency, PSNR and predictions are shown, read from the store's records. The service
is the AI Hub test suite's fake (the network edge); everything else is real."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from buildsys.build import BuildOptions, run_build
from buildsys.recipe.load import load_recipe
from tests.aihub.test_aihub_stages import FakeHub, fake, isolated, token  # noqa: F401
from tests.report.test_report_page import parse

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:random dataset:UserWarning")]

RECIPE = textwrap.dedent("""\
    recipe: hubreport
    models:
      tiny:
        source: {python: "buildsys.zoo.tiny:tiny_convnet", seed: 0}
        inputs: {image: {shape: [1, 3, 8, 8]}}
        outputs: [logits]
        task: segmentation
    datasets:
      rnd: {random: {seed: 0, low: 0.0, high: 1.0}, calibration: 4, validation: 2}
    quantization:
      w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: rnd}
    targets:
      onnx: {runtime: onnx}
      tflite: {runtime: tflite}
    devices:
      host: {backend: host, profile: {warmup: 1, runs: 3}}
      s23: {backend: aihub, name: "Samsung Galaxy S23"}
    builds:
      - {model: tiny, quantization: float, target: onnx, device: host}
      - {model: tiny, quantization: w8a8, target: tflite, device: s23}
    validate: {dataset: rnd, psnr_min_db: 12}
    """)
ON_DEVICE = "tiny/w8a8/tflite/s23"


def test_page_shows_ai_hub_variants_measured_on_the_device(
        token: str, fake: FakeHub, isolated: Path) -> None:  # noqa: F811
    recipe_path = isolated / "recipe.yaml"
    recipe_path.write_text(RECIPE)
    assert run_build(load_recipe(recipe_path), BuildOptions(inline=True, jobs=1,
                                                            quiet=True)) == 0
    page_path = isolated / "release" / "hubreport" / "report.html"
    page, text = parse(page_path), page_path.read_text()
    index = json.loads((isolated / "release" / "hubreport" / "index.json").read_text())
    assert [r["id"] for r in index["variants"]] == ["tiny/float/onnx/host"]
    assert list(page.rows) == ["tiny/float/onnx/host", ON_DEVICE]

    validate_dir = isolated / "build" / "hubreport" / ON_DEVICE / "validate"
    validation = json.loads((validate_dir / "validation.json").read_text())
    cells, shown = page.rows[ON_DEVICE], page.cell_text[ON_DEVICE]
    assert float(cells["latency_ms"]) == 0.812  # the fake device's estimated inference time
    assert shown["latency_where"].startswith("device (AI Hub)")
    assert "Samsung Galaxy S23 (AI Hub)" in shown["latency_where"]
    assert json.loads(cells["psnr_db"]) == {"logits": validation["outputs"]["logits"]["psnr_db"]}
    assert float(cells["task_metric"]) == validation["outputs"]["logits"]["argmax_agreement"]
    assert int(cells["model_bytes"]) > 0
    assert "ops on NPU/GPU/CPU 3/0/1" in text and "peak memory" in text
    assert "s23: measured on the real device (AI Hub)" in text
    # its predictions, from the device, are overlaid like every other variant's
    assert len(page.disagreements) == 2 * 2
