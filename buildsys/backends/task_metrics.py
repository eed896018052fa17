"""Task metrics against ground-truth labels: mIoU and pixel accuracy for segmentation, top-k
accuracy for classification. Arrays in, plain floats out.

Conventions (those of Cityscapes/mmsegmentation and ImageNet evaluations):

- Segmentation: logits ``[1, C, H, W]`` per sample; the prediction is the argmax over C. A
  prediction of another size than the mask is resized to it by nearest-neighbour sampling.
  Pixels whose label is ``ignore_index`` count for nothing. One confusion matrix over all
  samples; IoU per class = TP / (TP + FP + FN); mIoU averages the classes that occur in the
  labels or the predictions (a class absent from both has no IoU). Pixel accuracy = correct /
  counted pixels.
- Classification: logits ``[1, C]`` (or ``[C]``) per sample; top-k is the share of samples
  whose label is among the k highest logits (ties broken by the lower class index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from buildsys.errors import StageError


def _nearest(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    rows = (np.arange(shape[0]) * pred.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * pred.shape[1]) // shape[1]
    return pred[rows[:, None], cols[None, :]]


def confusion_matrix(logits: Sequence[np.ndarray], masks: Sequence[np.ndarray], classes: int,
                     ignore_index: int) -> np.ndarray:
    """``classes × classes`` counts, rows = label, columns = prediction."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for index, (out, mask) in enumerate(zip(logits, masks, strict=True)):
        out = np.asarray(out)
        scores = out[0] if out.ndim == 4 else out
        if scores.ndim != 3:
            raise StageError(f"segmentation metrics need logits [1, C, H, W]; sample {index} "
                             f"is {list(out.shape)}")
        if scores.shape[0] != classes:
            raise StageError(f"the model gives {scores.shape[0]} class scores per pixel but "
                             f"the dataset's labels declare classes: {classes}")
        pred = np.argmax(scores, axis=0)
        if pred.shape != mask.shape:
            pred = _nearest(pred, mask.shape)
        keep = mask != ignore_index
        matrix += np.bincount(mask[keep].astype(np.int64) * classes + pred[keep],
                              minlength=classes * classes).reshape(classes, classes)
    return matrix


def segmentation_metrics(logits: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                         classes: int, ignore_index: int) -> dict[str, Any]:
    matrix = confusion_matrix(logits, masks, classes, ignore_index)
    true_pos = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_pos
    present = union > 0
    counted = int(matrix.sum())
    iou = np.where(present, true_pos / np.maximum(union, 1), np.nan)
    return {
        "miou": float(np.mean(iou[present])) if present.any() else 0.0,
        "pixel_accuracy": float(true_pos.sum() / counted) if counted else 0.0,
        "classes_present": int(present.sum()),
        "pixels": counted,
    }


def classification_metrics(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray]
                           ) -> dict[str, Any]:
    hits = {1: 0, 5: 0}
    for index, (out, label) in enumerate(zip(logits, labels, strict=True)):
        scores = np.asarray(out).reshape(-1)
        if np.asarray(out).ndim > 2 or scores.size < 2:
            raise StageError(f"classification metrics need logits [1, C]; sample {index} is "
                             f"{list(np.asarray(out).shape)}")
        truth = np.asarray(label).reshape(-1)
        if truth.size != 1:
            raise StageError(f"classification labels are one class id per sample; label "
                             f"{index} has shape {list(np.asarray(label).shape)}")
        # Stable sort of the negated scores: ties go to the lower class index.
        ranking = np.argsort(-scores, kind="stable")
        for k in hits:
            hits[k] += int(int(truth[0]) in ranking[:k])
    count = len(labels)
    return {"top1": hits[1] / count if count else 0.0,
            "top5": hits[5] / count if count else 0.0, "samples": count}
