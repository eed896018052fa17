"""Recipe mistakes around labels, budgets, mixed precision and `auto`: reported before
anything runs, each naming file:line:col and the key."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from buildsys.errors import RecipeError
from buildsys.recipe.load import load_recipe
from tests.conftest import Project

BASE = """\
recipe: acc
models:
  seg:
    source: {onnx: model.onnx}
    inputs: {image: {shape: [1, 3, 8, 8]}}
    task: segmentation
datasets:
  photos:
    images: "photos/*.png"
    labels: {masks: "masks/*.png", classes: 4}
    calibration: 1
    validation: 1
quantization:
  w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}
  auto: {engine: auto, calibration: photos, budget: {miou_drop_max: 0.01}}
targets:
  onnx: {runtime: onnx}
  qnn: {runtime: qnn_context_binary}
devices:
  host: {backend: host}
  sim: {backend: qnn-htp-simulator, chipset: sm8550}
builds:
  - {model: seg, quantization: [w8a8, auto], target: onnx, device: host}
validate:
  dataset: photos
  miou_drop_max: 0.05
"""


@pytest.fixture
def acc(project: Project) -> Project:
    (project.root / "model.onnx").write_bytes(b"")
    for folder, mode in (("photos", "RGB"), ("masks", "L")):
        (project.root / folder).mkdir()
        for name in ("a", "b"):
            Image.fromarray(np.zeros((8, 8, 3) if mode == "RGB" else (8, 8), np.uint8),
                            mode).save(project.root / folder / f"{name}.png")
    return project


def problems(project: Project, text: str) -> list[str]:
    path = project.write("recipe.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return info.value.problems


def test_the_base_recipe_loads(acc: Project) -> None:
    recipe = load_recipe(acc.write("recipe.yaml", BASE))
    auto = next(v for v in recipe.variants if v.quantization == "auto")
    # the budget is checked again on the device the winner runs on
    assert auto.thresholds() == {"dataset": "photos", "miou_drop_max": 0.01}


def test_a_misspelt_threshold_names_its_line(acc: Project) -> None:
    found = problems(acc, BASE.replace("  miou_drop_max: 0.05", "  miou_drop_mx: 0.05"))
    assert len(found) == 1
    assert "recipe.yaml:26:3" in found[0] and "validate.miou_drop_mx" in found[0]
    assert "miou_drop_max" in found[0]


def test_labelled_thresholds_need_labels(acc: Project) -> None:
    text = BASE.replace('    labels: {masks: "masks/*.png", classes: 4}\n', "")
    found = problems(acc, text)
    assert any("validate.miou_drop_max" in p and "validation dataset has none" in p
               for p in found)
    assert any("quantization.auto.budget.miou_drop_max" in p for p in found)


def test_masks_must_match_every_image(acc: Project) -> None:
    (acc.root / "masks" / "b.png").unlink()
    found = problems(acc, BASE)
    assert len(found) == 1
    assert "datasets.photos.labels.masks" in found[0]
    assert "no mask named like image b.png" in found[0]


def test_masks_need_a_class_count(acc: Project) -> None:
    found = problems(acc, BASE.replace(", classes: 4}", "}"))
    assert any("datasets.photos.labels" in p for p in found)


def test_auto_takes_a_budget_not_a_fixed_scheme(acc: Project) -> None:
    found = problems(acc, BASE.replace("budget: {miou_drop_max: 0.01}", "objective: size"))
    assert any("quantization.auto" in p and "'budget' is a required property" in p
               for p in found)
    found = problems(acc, BASE.replace("budget: {", "weights: int8, budget: {"))
    assert any("quantization.auto.weights" in p and "chosen by the auto ladder" in p
               for p in found)


def test_mixed_precision_is_checked_against_the_htp(acc: Project) -> None:
    mixed = ("  mixed:\n    engine: onnxruntime\n    weights: int8\n    activations: int8\n"
             "    calibration: photos\n    mixed: {int16: [mix], float: [head]}\n  auto:")
    text = BASE.split("builds:")[0].replace("  auto:", mixed).replace(
        "  qnn: {runtime: qnn_context_binary}",
        "  qnn: {runtime: qnn_context_binary, float: refuse}").replace(
        "  sim: {backend: qnn-htp-simulator, chipset: sm8550}",
        "  sim: {backend: qnn-htp-simulator, chipset: sm8550}\n"
        "  old: {backend: qnn-htp-simulator, chipset: sm8350}") + (
        "builds:\n  - {model: seg, quantization: mixed, target: qnn, device: [sim, old]}\n"
        "validate: {dataset: photos}\n")
    found = problems(acc, text)
    assert any("builds[0].quantization" in p and "refuses float on HTP" in p for p in found)
    assert any("builds[0].device" in p and "HTP v68 (sm8350) has no fp16 mode" in p
               for p in found)
    aimet = BASE.replace("  w8a8: {engine: onnxruntime,", "  w8a8: {mixed: {int16: [a]}, "
                         "engine: aimet,")
    assert any("quantization.w8a8.mixed" in p and "not aimet" in p
               for p in problems(acc, aimet))
