"""fp32 reference outputs on the validation samples: what every artifact is compared with."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import (
    ORT_TOOLS,
    PYTHON_TOOLS,
    load_samples,
    load_torch_model,
    save_samples,
)
from buildsys.stages.base import Stage, StageContext


class ReferenceStage(Stage):
    kind: ClassVar[str] = "reference"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("reference.npz",)
    max_threads: ClassVar[int] = 2

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return (*PYTHON_TOOLS, *ORT_TOOLS) if not params["source"] else (
            *PYTHON_TOOLS, "torch")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        samples = load_samples(ctx.input("samples"))
        outputs_named = ctx.params["io"]["outputs"]
        if ctx.params["source"]:
            from buildsys.backends.torch_models import run_torch

            outputs = run_torch(load_torch_model(ctx), samples, outputs_named)
            where = "torch fp32"
        else:
            from buildsys.backends.ort_runtime import run

            outputs, _ = run(ctx.input("model"), samples, level="basic", threads=ctx.threads)
            where = "onnxruntime fp32 (ORT_ENABLE_BASIC)"
        save_samples(outputs, ctx.output("reference.npz"))
        return {"samples": len(samples), "computed_with": where}
