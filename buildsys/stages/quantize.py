"""Post-training quantization (or AIMET quantization-aware training) to a QDQ ONNX, so every
later stage takes one format."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.errors import StageError
from buildsys.numerics import NUMERICS
from buildsys.stages._common import (
    ORT_TOOLS,
    PYTHON_TOOLS,
    example_inputs,
    load_samples,
    load_torch_model,
)
from buildsys.stages.base import Stage, StageContext

BITS = {"int4": 4, "int8": 8, "int16": 16}


class QuantizeStage(Stage):
    kind: ClassVar[str] = "quantize"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"3+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("model.onnx",)
    max_threads: ClassVar[int] = 2

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        if params["scheme"]["engine"] == "aimet":
            return (*PYTHON_TOOLS, "torch", "onnx", "aimet-torch")
        return (*PYTHON_TOOLS, *ORT_TOOLS)  # calibration runs the model on ORT

    def run(self, ctx: StageContext) -> dict[str, Any]:
        scheme = ctx.params["scheme"]
        calibration = load_samples(ctx.input("calibration"))
        if scheme.get("samples"):
            calibration = calibration[: scheme["samples"]]
        if not calibration:
            raise StageError("the calibration split is empty")
        dst = ctx.output("model.onnx")
        if scheme["engine"] == "aimet":
            from buildsys.backends.aimet_quant import quantize_aimet
            from buildsys.backends.qdq_fold import fold_weight_quantizers

            io = ctx.params["io"]
            exported = ctx.work_dir / "aimet_qdq.onnx"
            qat = scheme.get("qat") or {}
            train = None
            if qat:
                from buildsys.backends.torch_models import import_callable

                # The module is importable from the project (the worker's sys.path); its
                # source files are inputs of this stage, so editing them re-runs it.
                train = import_callable(qat["train"], None, "quantization qat train")
            splits = {"calibration": calibration}
            if "qat/validation" in ctx.inputs:
                splits["validation"] = load_samples(ctx.input("qat/validation"))
            info = quantize_aimet(
                load_torch_model(ctx), example_inputs(io), calibration, exported,
                weights_bw=BITS[scheme["weights"]], activations_bw=BITS[scheme["activations"]],
                quant_scheme=scheme.get("quant_scheme", "tf_enhanced"),
                config=scheme.get("config", "htp_v73"), input_names=list(io["inputs"]),
                output_names=io["outputs"], train=train, train_splits=splits,
                epochs=int(qat.get("epochs", 1)),
            )
            # AIMET keeps float weights behind QuantizeLinear; HTP wants them pre-quantized.
            info = {**(info or {}), "weights_folded": fold_weight_quantizers(exported, dst)}
        else:
            from buildsys.backends.ort_quantize import quantize_qdq

            mixed = scheme.get("mixed") or {}
            int16 = list(mixed.get("int16") or []) + promoted(ctx)
            info = quantize_qdq(
                ctx.input("model"), dst, calibration, weights=scheme["weights"],
                activations=scheme["activations"], method=scheme.get("method", "minmax"),
                per_channel=bool(scheme.get("per_channel")),
                int16_layers=int16, float_layers=list(mixed.get("float") or []),
            )
        return {"engine": scheme["engine"], "calibration_samples": len(calibration),
                **(info or {})}


def promoted(ctx: StageContext) -> list[str]:
    """The `promote_top` most sensitive tensors of a sensitivity report (an `auto` rung that
    keeps the layers w8a8 hurts most at 16-bit activations)."""
    count = ctx.params["scheme"].get("promote_top")
    if not count:
        return []
    from buildsys.stages._common import read_json

    layers = read_json(ctx.input("sensitivity"))["layers"]
    return [layer["tensor"] for layer in layers[:count]]
