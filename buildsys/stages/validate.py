"""Compare an artifact's outputs with the fp32 reference; recipe thresholds fail the build."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from buildsys.errors import StageError
from buildsys.numerics import NUMERICS
from buildsys.stages._common import PYTHON_TOOLS, load_samples, write_json
from buildsys.stages.base import CheckFailed, Stage, StageContext

PSNR_CAP_DB = 300.0  # identical outputs: report a finite figure (JSON has no infinity)


def psnr_db(reference: Any, actual: Any) -> float:
    import numpy as np

    reference = reference.astype(np.float64)
    mse = float(np.mean((reference - actual.astype(np.float64)) ** 2))
    peak = float(np.max(np.abs(reference)))
    if mse == 0.0:
        return PSNR_CAP_DB
    if peak == 0.0:
        return -PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def compare(reference: list[dict[str, Any]], actual: list[dict[str, Any]], names: list[str],
            task: str) -> dict[str, Any]:
    import numpy as np

    per_output: dict[str, Any] = {}
    for name in names:
        ref = np.stack([r[name] for r in reference])
        out = np.stack([a[name] for a in actual]).reshape(ref.shape)
        # Rounded to what the figures can mean, so they read the same from every machine.
        figures: dict[str, Any] = {
            "psnr_db": round(psnr_db(ref, out), 2),
            "max_abs_error": float(f"{np.max(np.abs(ref.astype(np.float64) - out)):.4g}"),
        }
        if task in ("classification", "segmentation") and ref.ndim >= 3:
            # samples × batch × classes [× H × W]: class axis is 2 after stacking
            agreement = float(np.mean(np.argmax(ref, axis=2) == np.argmax(out, axis=2)))
            key = "top1_agreement" if task == "classification" else "argmax_agreement"
            figures[key] = round(agreement, 4)
        per_output[name] = figures
    return per_output


CHECKS = (  # threshold key, figure, direction
    ("psnr_min_db", "psnr_db", "min"),
    ("max_abs_error_max", "max_abs_error", "max"),
    ("top1_min", "top1_agreement", "min"),  # without labels: fp32's top-1 is the truth
    ("argmax_agreement_min", "argmax_agreement", "min"),
)
# Against labels: the variant's figure (…_min) or its drop below fp32's (…_drop_max).
TASK_FIGURES = {"segmentation": ("miou", "pixel_accuracy"),
                "classification": ("top1", "top5")}
TASK_CHECKS = tuple((f"{figure}_{suffix}", figure, part, direction)
                    for figures in TASK_FIGURES.values() for figure in figures
                    for suffix, part, direction in (("min", "variant", "min"),
                                                    ("drop_max", "drop", "max")))
LABELLED_KEYS = {key for key, *_ in TASK_CHECKS}


def task_metrics(task: str, outputs: list[Any], labels: list[Any], spec: dict[str, Any]
                 ) -> dict[str, Any]:
    from buildsys.backends.task_metrics import classification_metrics, segmentation_metrics

    if task == "segmentation":
        from buildsys.data.labels import DEFAULT_IGNORE_INDEX

        return segmentation_metrics(outputs, labels, int(spec["classes"]),
                                    int(spec.get("ignore_index", DEFAULT_IGNORE_INDEX)))
    return classification_metrics(outputs, labels)


def evaluate(reference: list[dict[str, Any]], actual: list[dict[str, Any]],
             labels: list[dict[str, Any]] | None, params: dict[str, Any]) -> dict[str, Any]:
    """Figures of an artifact's outputs against fp32, and against the labels if there are
    any (fp32's and the artifact's task metrics and the drop between them)."""
    names, task = params["outputs"], params["task"]
    result: dict[str, Any] = {"samples": len(reference),
                              "outputs": compare(reference, actual, names, task)}
    if labels is None:
        return result
    if task not in TASK_FIGURES:
        raise StageError(f"labels give task metrics for segmentation or classification "
                         f"models; this model's task is {task!r}")
    first = names[0]  # task metrics read the first output
    truth = [item["label"] for item in labels]
    fp32 = task_metrics(task, [r[first] for r in reference], truth, params["labels"])
    mine = task_metrics(task, [a[first] for a in actual], truth, params["labels"])
    figures = TASK_FIGURES[task]
    result["task_metrics"] = {
        "output": first,
        "fp32": {k: round(fp32[k], 4) for k in figures},
        "variant": {k: round(mine[k], 4) for k in figures},
        "drop": {k: round(fp32[k] - mine[k], 4) for k in figures},
    }
    return result


def check(result: dict[str, Any], thresholds: dict[str, Any]) -> list[str]:
    """The thresholds an evaluation misses, one message each (empty: it passes)."""
    task_result = result.get("task_metrics")
    wanted = sorted(k for k in thresholds if k in LABELLED_KEYS)
    if wanted and task_result is None:
        raise StageError(f"{', '.join(wanted)} compare against labels; the validation "
                         "dataset has none (add labels: under the dataset)")
    failures = []
    for key, figure, direction in CHECKS:
        if key not in thresholds or (key == "top1_min" and task_result is not None):
            continue
        limit = thresholds[key]
        for name, figures in result["outputs"].items():
            value = figures.get(figure)
            if value is not None and _misses(value, limit, direction):
                failures.append(f"{name}: {figure} {value:g} is {_word(direction)} {key} "
                                f"{limit:g}")
    for key, figure, part, direction in TASK_CHECKS:
        if key not in thresholds or task_result is None:
            continue
        value, limit = task_result[part].get(figure), thresholds[key]
        if value is None:
            raise StageError(f"{key} does not apply to this model's task")
        if _misses(value, limit, direction):
            what = figure if part == "variant" else f"{figure} drop vs fp32"
            failures.append(f"{task_result['output']}: {what} {value:g} is {_word(direction)} "
                            f"{key} {limit:g}")
    return failures


def _misses(value: float, limit: float, direction: str) -> bool:
    return value < limit if direction == "min" else value > limit


def _word(direction: str) -> str:
    return "below" if direction == "min" else "above"


class ValidateStage(Stage):
    kind: ClassVar[str] = "validate"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("validation.json",)
    tools: ClassVar[tuple[str, ...]] = PYTHON_TOOLS

    def run(self, ctx: StageContext) -> dict[str, Any]:
        reference = load_samples(ctx.input("reference"))
        actual = load_samples(ctx.input("outputs"))
        labels = load_samples(ctx.inputs["labels"]) if "labels" in ctx.inputs else None
        result = evaluate(reference, actual, labels, ctx.params)
        result["thresholds"] = ctx.params["thresholds"]
        failures = check(result, ctx.params["thresholds"])
        result["passed"] = not failures
        variant = ctx.stage_id.rsplit("/", 1)[0]
        if failures:
            raise CheckFailed(f"{variant}: " + "; ".join(failures), result)
        write_json(ctx.output("validation.json"), result)
        return result
