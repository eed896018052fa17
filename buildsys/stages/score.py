"""Score one `auto` rung on the host: run its model on the validation samples with ONNX
Runtime at the CPU-independent settings (ORT_ENABLE_BASIC) and compute the figures the budget
is checked against (PSNR vs fp32, task metrics vs the labels). No thresholds here: the budget
is applied by the selection, so changing it re-runs the selection only."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import ORT_TOOLS, PYTHON_TOOLS, load_samples, write_json
from buildsys.stages.base import Stage, StageContext


class ScoreStage(Stage):
    kind: ClassVar[str] = "score"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"1+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("score.json",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, *ORT_TOOLS)
    max_threads: ClassVar[int] = 2

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.ort_runtime import run
        from buildsys.stages.validate import evaluate

        model = ctx.input("model")
        if ctx.params.get("fp16"):
            # HTP runs float models in fp16: score with every float weight rounded to fp16
            # (activations stay fp32 on the host: an estimate, confirmed on the simulator).
            model = round_weights_to_fp16(model, ctx.work_dir / "fp16_weights.onnx")
        samples = load_samples(ctx.input("samples"))
        outputs, _ = run(model, samples, level="basic", threads=ctx.threads)
        named = [dict(zip(ctx.params["outputs"], o.values(), strict=False)) for o in outputs]
        labels = load_samples(ctx.inputs["labels"]) if "labels" in ctx.inputs else None
        result = evaluate(load_samples(ctx.input("reference")), named, labels, ctx.params)
        size = ctx.input("model").stat().st_size
        result["model_bytes"] = size // 2 if ctx.params.get("fp16") else size
        write_json(ctx.output("score.json"), result)
        return result


def round_weights_to_fp16(src: Any, dst: Any) -> Any:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    onnx.save(model, str(dst))
    return dst
