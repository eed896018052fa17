"""TensorRT stages: build an engine for the local NVIDIA GPU, run it on the validation samples,
profile it. Without a usable CUDA GPU they cannot run here and the planner says why
(`unavailable`), before anything runs; a result already in the store is still reused."""

from __future__ import annotations

import statistics
from typing import Any, ClassVar

from buildsys.cuda_gpus import CUDA_GPU
from buildsys.stages._common import (
    PYTHON_TOOLS,
    compiled_inputs,
    example_inputs,
    load_samples,
    save_samples,
    write_json,
)
from buildsys.stages.base import Stage, StageContext

# torch holds the CUDA buffers; the engine follows the GPU model (cuda_gpus.py).
TENSORRT_TOOLS = (*PYTHON_TOOLS, "onnx", "tensorrt", "torch", CUDA_GPU)


class TensorRTStage(Stage):
    tools: ClassVar[tuple[str, ...]] = TENSORRT_TOOLS
    needs_hardware: ClassVar[bool] = True

    @classmethod
    def unavailable(cls) -> str | None:
        from buildsys.cuda_gpus import why_no_gpu

        reason = why_no_gpu()
        return None if reason is None else f"TensorRT needs an NVIDIA GPU with CUDA: {reason}"

    @classmethod
    def requirements(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return tuple(n for n in super().requirements(params) if n != CUDA_GPU)


class TensorRTCompileStage(TensorRTStage):
    kind: ClassVar[str] = "tensorrt_compile"
    output_files: ClassVar[tuple[str, ...]] = ("model.engine",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.tensorrt import build_engine

        return build_engine(ctx.input("model"), ctx.output("model.engine"))


class TensorRTInferStage(TensorRTStage):
    kind: ClassVar[str] = "tensorrt_infer"
    output_files: ClassVar[tuple[str, ...]] = ("outputs.npz", "infer.json")
    measurement_files: ClassVar[tuple[str, ...]] = ("infer.json",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.tensorrt import run
        from buildsys.cuda_gpus import gpu_class

        outputs, seconds = run(compiled_inputs(ctx)["model.engine"],
                               load_samples(ctx.input("samples")))
        named = [dict(zip(ctx.params["io"]["outputs"], o.values(), strict=False))
                 for o in outputs]
        save_samples(named, ctx.output("outputs.npz"))
        timings = [s * 1000 for s in seconds]
        summary = {"where": f"NVIDIA GPU ({gpu_class()}, TensorRT)", "runs": len(timings),
                   "latency_ms": {"median": statistics.median(timings), "min": min(timings),
                                  "max": max(timings)} if timings else None}
        write_json(ctx.output("infer.json"), summary)
        return summary


class TensorRTProfileStage(TensorRTStage):
    kind: ClassVar[str] = "tensorrt_profile"
    output_files: ClassVar[tuple[str, ...]] = ("profile.json",)
    measurement_files: ClassVar[tuple[str, ...]] = ("profile.json",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import numpy as np

        from buildsys.backends.tensorrt import profile

        rng = np.random.default_rng(0)
        sample = {n: rng.random(a.shape, dtype=np.float32).astype(a.dtype)
                  for n, a in example_inputs(ctx.params["io"]).items()}
        result = profile(compiled_inputs(ctx)["model.engine"], sample,
                         warmup=ctx.params["warmup"], runs=ctx.params["runs"])
        write_json(ctx.output("profile.json"), result)
        return result
