"""fp32 ONNX from the model source (or the given ONNX file, checked and renamed)."""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from buildsys.numerics import NUMERICS, TENSORFLOW_KERNELS
from buildsys.stages._common import PYTHON_TOOLS, example_inputs, load_torch_model
from buildsys.stages.base import Stage, StageContext


class ExportStage(Stage):
    kind: ClassVar[str] = "export"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("model.onnx",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, "torch", "onnx")
    max_threads: ClassVar[int] = 2

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        if params["source"].get("keras"):
            return (*PYTHON_TOOLS, "onnx", "tensorflow-cpu", "tf2onnx", "onnxruntime",
                    TENSORFLOW_KERNELS)
        return cls.tools

    def run(self, ctx: StageContext) -> dict[str, Any]:
        io = ctx.params["io"]
        if ctx.params["source"].get("onnx"):
            return self._from_onnx(ctx)
        if ctx.params["source"].get("keras"):
            from buildsys.backends.tf_keras import to_onnx

            return to_onnx(ctx.input("source/keras"), example_inputs(io), io["outputs"],
                           ctx.output("model.onnx"), opset=ctx.params["opset"])
        from buildsys.backends.torch_models import export_onnx

        model = load_torch_model(ctx)
        info = export_onnx(model, example_inputs(io), io["outputs"], ctx.output("model.onnx"),
                           opset=ctx.params["opset"])
        params = sum(p.numel() for p in model.parameters())
        return {"parameters": int(params), **(info or {})}

    def _from_onnx(self, ctx: StageContext) -> dict[str, Any]:
        import onnx

        from buildsys.errors import StageError

        source = ctx.input("source/onnx")
        try:
            model = onnx.load(str(source))
            onnx.checker.check_model(model)
        except Exception as exc:
            raise StageError(f"{source.name} is not a valid ONNX model: {exc}") from exc
        declared = list(ctx.params["io"]["inputs"])
        actual = [i.name for i in model.graph.input]
        if actual != declared:
            raise StageError(f"{source.name}: inputs are {actual}, the recipe declares "
                             f"{declared}")
        shutil.copyfile(source, ctx.output("model.onnx"))
        return {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
