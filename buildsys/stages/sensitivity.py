"""Per-layer sensitivity of a quantized model: each activation quantizer's own effect on the
outputs over the validation samples, worst first (see buildsys/backends/sensitivity.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import ORT_TOOLS, PYTHON_TOOLS, load_samples, write_json
from buildsys.stages.base import Stage, StageContext


class SensitivityStage(Stage):
    kind: ClassVar[str] = "sensitivity"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"1+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("sensitivity.json",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, *ORT_TOOLS)
    max_threads: ClassVar[int] = 2

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.sensitivity import layer_sensitivity

        # One run per quantizer per sample (FFNet 78s_lowres: 147 quantizers, ≈ 0.8 s CPU
        # each per sample): the first `samples` validation samples rank the layers.
        samples = load_samples(ctx.input("samples"))[: ctx.params.get("samples", 1)]
        report = layer_sensitivity(ctx.input("model"), samples, ctx.work_dir, ctx.threads)
        write_json(ctx.output("sensitivity.json"), report)
        worst = report["layers"][0]
        return {"layers": len(report["layers"]), "worst": worst["tensor"],
                "worst_sqnr_db": worst["sqnr_db"]}
