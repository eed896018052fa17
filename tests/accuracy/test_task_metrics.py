"""mIoU, pixel accuracy and top-k on cases small enough to check by hand; labels read from
masks, class-id files and python loaders; thresholds as figures and as drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildsys.backends.task_metrics import classification_metrics, segmentation_metrics
from buildsys.data.labels import load_labels
from buildsys.errors import StageError
from buildsys.recipe.dataset_files import label_files
from buildsys.stages.validate import check, evaluate


def one_hot_logits(pred: np.ndarray, classes: int) -> np.ndarray:
    """[1, C, H, W] logits whose argmax is `pred`."""
    return np.eye(classes, dtype=np.float32)[pred].transpose(2, 0, 1)[None]


def test_miou_and_pixel_accuracy_by_hand() -> None:
    # label        prediction
    # 0 0 1        0 1 1
    # 2 2 255      2 0 0      (255 ignored)
    mask = np.array([[0, 0, 1], [2, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 0, 0]])
    figures = segmentation_metrics([one_hot_logits(pred, 3)], [mask], 3, 255)
    # class 0: TP 1, FP 1 (label 2 → 0), FN 1 (label 0 → 1): IoU 1/3
    # class 1: TP 1, FP 1, FN 0: IoU 1/2;  class 2: TP 1, FP 0, FN 1: IoU 1/2
    assert figures["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert figures["pixel_accuracy"] == pytest.approx(3 / 5)
    assert figures["pixels"] == 5


def test_absent_classes_do_not_count_and_predictions_are_resized_to_the_mask() -> None:
    mask = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])  # 2 × 4 mask, 4 classes, 2 and 3 absent
    pred = np.array([[0, 1]])  # 1 × 2 prediction: each pixel covers a 2 × 2 block
    figures = segmentation_metrics([one_hot_logits(pred, 4)], [mask], 4, 255)
    assert figures == {"miou": 1.0, "pixel_accuracy": 1.0, "classes_present": 2, "pixels": 8}


def test_class_count_must_match_the_logits() -> None:
    with pytest.raises(StageError, match=r"3 class scores per pixel but .* classes: 5"):
        segmentation_metrics([one_hot_logits(np.zeros((2, 2), int), 3)],
                             [np.zeros((2, 2), int)], 5, 255)


def test_top1_and_top5_by_hand() -> None:
    logits = [np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0]]),   # top-1 1
              np.array([[0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.6]]),   # top-5 6, 0, 1, 2, 3
              np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])]   # ties: 6, then 0, 1, 2, 3
    labels = [np.array(1), np.array(4), np.array(3)]
    figures = classification_metrics(logits, labels)
    assert figures["top1"] == pytest.approx(1 / 3)
    assert figures["top5"] == pytest.approx(2 / 3)  # label 4 is 6th in sample 1


def test_thresholds_as_figures_and_as_drops() -> None:
    mask = np.array([[0, 1], [1, 1]])
    truth = one_hot_logits(mask, 2)
    wrong = one_hot_logits(np.array([[0, 1], [1, 0]]), 2)
    params = {"outputs": ["logits"], "task": "segmentation", "labels": {"classes": 2}}
    result = evaluate([{"logits": truth}], [{"logits": wrong}], [{"label": mask}], params)
    metrics = result["task_metrics"]
    # fp32: perfect. Variant: class 0 IoU 1/2, class 1 IoU 2/3; 3 of 4 pixels right
    assert metrics["fp32"] == {"miou": 1.0, "pixel_accuracy": 1.0}
    assert metrics["variant"]["miou"] == pytest.approx(0.5833, abs=1e-4)
    assert metrics["drop"]["pixel_accuracy"] == pytest.approx(0.25)
    assert check(result, {"miou_min": 0.5, "pixel_accuracy_drop_max": 0.25}) == []
    misses = check(result, {"miou_drop_max": 0.4, "pixel_accuracy_min": 0.8})
    assert misses == ["logits: miou drop vs fp32 0.4167 is above miou_drop_max 0.4",
                      "logits: pixel_accuracy 0.75 is below pixel_accuracy_min 0.8"]
    unlabelled = evaluate([{"logits": truth}], [{"logits": wrong}], None, params)
    with pytest.raises(StageError, match="miou_min compare against labels"):
        check(unlabelled, {"miou_min": 0.5})


def test_masks_are_matched_to_images_by_name(tmp_path: Path) -> None:
    for name, value in (("b", 2), ("a", 1), ("c", 3)):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.jpg")
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.full((2, 2), value, np.uint8), "L").save(
            tmp_path / "masks" / f"{name}.png")
    spec = {"images": "*.jpg", "labels": {"masks": "masks/*.png", "classes": 4},
            "calibration": 1, "validation": 2}
    files = label_files(spec, tmp_path)
    assert [f.name for f in files] == ["a.png", "b.png", "c.png"]
    inputs = {"image": {"shape": [1, 3, 4, 4]}}
    masks = load_labels(spec, files, [], inputs, "validation", None)
    # the images' order (a, b, c): validation is b, c; resized 2×2 → 4×4 by nearest
    assert [int(m[0, 0]) for m in masks] == [2, 3] and masks[0].shape == (4, 4)
    (tmp_path / "masks" / "c.png").unlink()
    with pytest.raises(StageError, match=r"no mask named like image c\.jpg"):
        label_files(spec, tmp_path)


def test_class_id_files_in_order_or_by_name(tmp_path: Path) -> None:
    inputs = {"image": {"shape": [1, 3, 4, 4]}}
    ordered = tmp_path / "ids.txt"
    ordered.write_text("# one per sample\n3\n1\n\n2\n")
    spec = {"npy": "x.npy", "labels": {"file": "ids.txt", "classes": 4}, "calibration": 1}
    assert [int(v) for v in load_labels(spec, [ordered], [], inputs, "validation", None)] \
        == [1, 2]
    named = tmp_path / "named.txt"
    named.write_text("b.jpg 0\na.jpg, 3\n")
    images = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    spec = {"images": "*.jpg", "labels": {"file": "named.txt"}, "validation": 2}
    assert [int(v) for v in load_labels(spec, [named], images, inputs, "validation", None)] \
        == [3, 0]
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n9\n")
    spec = {"npy": "x.npy", "labels": {"file": "bad.txt", "classes": 4}, "calibration": 0}
    with pytest.raises(StageError, match=r"class id 9, outside 0\.\.3"):
        load_labels(spec, [bad], [], inputs, "validation", None)


def test_validation_of_a_classifier_against_class_ids(tmp_path: Path) -> None:
    """The validate stage on stored samples: top-1/top-5 for fp32 and the variant, and a
    drop threshold that fails the stage with its figures."""
    from buildsys.data.datasets import save_samples
    from buildsys.stages.base import CheckFailed, StageContext
    from buildsys.stages.validate import ValidateStage

    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 10, 20)]
    fp32 = [np.eye(10, dtype=np.float32)[[c]] + rng.normal(0, 0.1, (1, 10)).astype(np.float32)
            for c in labels]
    # the variant gets the first 4 samples wrong (label's logit pushed to the bottom)
    variant = [f.copy() for f in fp32]
    for v, c in zip(variant[:4], labels[:4], strict=True):
        v[0, c] = -5.0
    for name, rows in (("reference", fp32), ("outputs", variant)):
        save_samples([{"logits": r} for r in rows], tmp_path / f"{name}.npz")
    save_samples([{"label": np.array(c)} for c in labels], tmp_path / "labels.npz")

    def validate(thresholds: dict[str, float]) -> dict:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        ctx = StageContext("m/q/t/d/validate", {
            "thresholds": thresholds, "task": "classification", "outputs": ["logits"],
            "labels": {"classes": 10}},
            {n: tmp_path / f"{n}.npz" for n in ("reference", "outputs", "labels")},
            out, tmp_path)
        return ValidateStage().run(ctx)

    result = validate({"top1_min": 0.8})  # with labels: accuracy, not agreement
    assert result["task_metrics"]["fp32"] == {"top1": 1.0, "top5": 1.0}
    assert result["task_metrics"]["variant"] == {"top1": 0.8, "top5": 0.8}
    with pytest.raises(CheckFailed, match=r"top1 drop vs fp32 0\.2 is above top1_drop_max 0\.1"):
        validate({"top1_drop_max": 0.1})


def test_the_dataset_stage_stores_the_validation_labels(tmp_path: Path) -> None:
    """What the planner hands the dataset stage: image files and the label file as inputs,
    the labels' paths replaced by flags; labels.npz holds the validation split's ids."""
    from buildsys.data.datasets import load_samples_npz
    from buildsys.plan.accuracy import label_inputs
    from buildsys.stages.base import StageContext
    from buildsys.stages.dataset import DatasetStage

    for name in ("a", "b", "c"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    (tmp_path / "ids.txt").write_text("c.png 2\nb.png 1\na.png 0\n")
    spec = {"images": "*.png", "labels": {"file": "ids.txt", "classes": 3}, "calibration": 1}
    labels, refs = label_inputs(spec, tmp_path)
    assert labels == {"file": True, "classes": 3}
    inputs = {name: ref.path for name, ref in refs.items()}  # type: ignore[union-attr]
    inputs.update({f"files/{i:05d}/{n}.png": tmp_path / f"{n}.png"
                   for i, n in enumerate("abc")})
    params = {"spec": {"labels": labels, "calibration": 1}, "split": "validation",
              "count": None, "io": {"inputs": {"image": {"shape": [1, 3, 4, 4]}}}}
    assert DatasetStage.outputs(params) == ("samples.npz", "labels.npz")
    out = tmp_path / "out"
    DatasetStage().run(StageContext("data", params, inputs, out, tmp_path))
    stored = load_samples_npz(out / "labels.npz")
    assert [int(s["label"].reshape(-1)[0]) for s in stored] == [1, 2]
