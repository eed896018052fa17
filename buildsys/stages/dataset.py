"""Preprocess a dataset split into model-ready tensors (`samples.npz`)."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import PYTHON_TOOLS, save_samples
from buildsys.stages.base import Stage, StageContext


class DatasetStage(Stage):
    kind: ClassVar[str] = "dataset"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("samples.npz",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, "pillow")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.data.datasets import load_samples

        files = [ctx.inputs[n] for n in sorted(ctx.inputs) if n.startswith("files/")]
        samples = load_samples(ctx.params["spec"], files, ctx.params["io"]["inputs"],
                               ctx.params["split"], ctx.params["count"])
        save_samples(samples, ctx.output("samples.npz"))
        return {"samples": len(samples)}
