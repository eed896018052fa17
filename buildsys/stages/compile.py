"""Compile for a target runtime, locally: ORT-optimised ONNX (+ .ort), a QNN HTP context
binary for a Snapdragon SoC, TFLite via litert-torch, NCNN via pnnx, or an ExecuTorch program
for XNNPACK."""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from buildsys.numerics import NUMERICS, TENSORFLOW_KERNELS
from buildsys.stages._common import (
    PYTHON_TOOLS,
    RuntimeStage,
    example_inputs,
    load_samples,
    load_torch_model,
)
from buildsys.stages.base import StageContext


class CompileStage(RuntimeStage):
    kind: ClassVar[str] = "compile"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"5+{NUMERICS}"
    runs_model: ClassVar[bool] = False

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        if (params.get("source") or {}).get("keras"):  # TensorFlow's converter, no torch
            return (*PYTHON_TOOLS, "tensorflow-cpu", TENSORFLOW_KERNELS)
        return super().tool_names(params)

    @classmethod
    def outputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        runtime = params["runtime"]
        if runtime == "onnx":
            return ("model.onnx", "model.ort") if params.get("ort_format") else ("model.onnx",)
        if runtime == "qnn_context_binary":
            return ("model_ctx.onnx", "model_ctx_qnn.bin")
        if runtime == "ncnn":
            return ("model.ncnn.param", "model.ncnn.bin")
        if runtime == "executorch":
            return ("model.pte",)
        return ("model.tflite",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        runtime = ctx.params["runtime"]
        if runtime == "onnx":
            return self._onnx(ctx)
        if runtime == "qnn_context_binary":
            return self._qnn(ctx)
        if runtime == "ncnn":
            return self._ncnn(ctx)
        if runtime == "executorch":
            return self._executorch(ctx)
        return self._tflite(ctx)

    def _onnx(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.ort_runtime import convert_to_ort_format, optimize_model

        level = ctx.params["optimization"]
        dst = ctx.output("model.onnx")
        if precision(ctx) == "quant":
            # Above BASIC, ORT fuses Q/DQ into QLinear* integer kernels whose accuracy depends
            # on the CPU (no VNNI: tens of dB lost). Ship QDQ intact; the device's ORT fuses
            # for its own CPU at load time, and validation measures true numbers.
            level = "basic"
        optimize_model(ctx.input("model"), dst, level=level)
        metrics: dict[str, Any] = {"optimization": level}
        if ctx.params.get("ort_format"):
            # QDQ models keep their Q/DQ nodes in the .ort too, with the fusions saved for the
            # device's ORT (see convert_to_ort_format).
            quant = precision(ctx) == "quant"
            convert_to_ort_format(dst, ctx.output("model.ort"), runtime_optimizations=quant)
            metrics["ort_format"] = {"optimization_style": "runtime" if quant else "fixed"}
        return metrics

    def _qnn(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.ort_runtime import optimize_model
        from buildsys.backends.qnn import compile_context_binary

        # An `auto` winner may be float, a mixed scheme may keep float layers: both run those
        # in HTP's fp16 mode (which leaves quantized ops as they are).
        fp16 = ctx.params["precision"] in ("float", "auto") and ctx.params["float"] == "fp16"
        # Exporters (torch's, AIMET's) leave shape arithmetic (Shape → Gather → Concat feeding
        # Resize and Pad) that HTP cannot run; ORT's basic level folds it into constants and
        # keeps Q/DQ nodes as they are. (The QNN backend compiles in a fresh process, which
        # keeps the context binary's bytes reproducible.)
        local = ctx.work_dir / "model.onnx"
        optimize_model(ctx.input("model"), local, level="basic")
        produced = compile_context_binary(local, ctx.work_dir / "compiled",
                                          ctx.params["chipset"], fp16=fp16)
        shutil.copyfile(produced["model"], ctx.output("model_ctx.onnx"))
        shutil.copyfile(produced["context"], ctx.output("model_ctx_qnn.bin"))
        return {"chipset": ctx.params["chipset"], "fp16": fp16}

    def _tflite(self, ctx: StageContext) -> dict[str, Any]:
        if ctx.params["source"].get("keras"):
            from buildsys.backends.tf_keras import to_tflite

            return to_tflite(ctx.input("source/keras"), ctx.output("model.tflite"))
        from buildsys.backends.tflite import convert

        info = convert(load_torch_model(ctx), example_inputs(ctx.params["io"]),
                       ctx.output("model.tflite"))
        return info or {}

    def _ncnn(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.ncnn import convert

        return convert(load_torch_model(ctx), example_inputs(ctx.params["io"]), ctx.out_dir,
                       ctx.work_dir, fp16=ctx.params["storage"] == "fp16")

    def _executorch(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.executorch import convert

        scheme = ctx.params.get("scheme")
        calibration = load_samples(ctx.input("calibration")) if scheme else None
        return convert(load_torch_model(ctx), example_inputs(ctx.params["io"]),
                       ctx.output("model.pte"), quantize="w8a8" if scheme else None,
                       calibration=calibration)

def precision(ctx: StageContext) -> str:
    """float or quant; "auto" (quantization: auto, mixed schemes) is read off the model."""
    if ctx.params["precision"] != "auto":
        return str(ctx.params["precision"])
    import onnx

    model = onnx.load(str(ctx.input("model")), load_external_data=False)
    quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    return "quant" if quantized else "float"
