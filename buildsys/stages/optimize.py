"""Optional graph optimisation on the torch model (BN folding, cross-layer equalization),
then export: the result replaces the plain export for every later stage."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import PYTHON_TOOLS, example_inputs, load_torch_model
from buildsys.stages.base import Stage, StageContext


class OptimizeStage(Stage):
    kind: ClassVar[str] = "optimize"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("model.onnx",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, "torch", "onnx", "aimet-torch")
    max_threads: ClassVar[int] = 2

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.torch_models import (
            cross_layer_equalize,
            export_onnx,
            fold_batchnorm,
        )

        io = ctx.params["io"]
        options = ctx.params["optimize"]
        model = load_torch_model(ctx)
        examples = example_inputs(io)
        metrics: dict[str, Any] = {}
        if options.get("cross_layer_equalization"):
            model, info = cross_layer_equalize(model, examples)
            metrics["cross_layer_equalization"] = info
        elif options.get("fold_batchnorm"):
            model, info = fold_batchnorm(model, examples, engine="torch")  # no aimet import
            metrics["fold_batchnorm"] = info
        export_onnx(model, examples, io["outputs"], ctx.output("model.onnx"),
                    opset=ctx.params["opset"])
        return metrics
