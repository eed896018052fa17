"""Compare an artifact's outputs with the fp32 reference; recipe thresholds fail the build."""

from __future__ import annotations

import math
from typing import Any, ClassVar

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
    ("top1_min", "top1_agreement", "min"),
    ("argmax_agreement_min", "argmax_agreement", "min"),
)


class ValidateStage(Stage):
    kind: ClassVar[str] = "validate"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("validation.json",)
    tools: ClassVar[tuple[str, ...]] = PYTHON_TOOLS

    def run(self, ctx: StageContext) -> dict[str, Any]:
        reference = load_samples(ctx.input("reference"))
        actual = load_samples(ctx.input("outputs"))
        params = ctx.params
        per_output = compare(reference, actual, params["outputs"], params["task"])
        thresholds = params["thresholds"]
        failures = []
        for key, figure, direction in CHECKS:
            if key not in thresholds:
                continue
            limit = thresholds[key]
            for name, figures in per_output.items():
                value = figures.get(figure)
                if value is None:
                    continue
                bad = value < limit if direction == "min" else value > limit
                if bad:
                    word = "below" if direction == "min" else "above"
                    failures.append(f"{name}: {figure} {value:g} is {word} {key} {limit:g}")
        variant = ctx.stage_id.rsplit("/", 1)[0]
        result = {"samples": len(reference), "outputs": per_output, "thresholds": thresholds,
                  "passed": not failures}
        if failures:
            raise CheckFailed(f"{variant}: " + "; ".join(failures), result)
        write_json(ctx.output("validation.json"), result)
        return result
