"""Latency and memory of a compiled artifact on the host (ORT CPU, LiteRT, ncnn or
ExecuTorch), with per-op times where the runtime gives them. Always says where it ran."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.stages._common import (
    RuntimeStage,
    compiled_inputs,
    example_inputs,
    write_json,
)
from buildsys.stages.base import StageContext


class ProfileStage(RuntimeStage):
    kind: ClassVar[str] = "profile"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("profile.json",)
    measurement_files: ClassVar[tuple[str, ...]] = ("profile.json",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import numpy as np

        params = ctx.params
        files = compiled_inputs(ctx)
        rng = np.random.default_rng(0)
        sample = {n: rng.random(a.shape, dtype=np.float32).astype(a.dtype)
                  for n, a in example_inputs(params["io"]).items()}
        if params["runtime"] == "tflite":
            from buildsys.backends.tflite import profile

            result = profile(files["model.tflite"], sample, warmup=params["warmup"],
                             runs=params["runs"], threads=ctx.threads)
        elif params["runtime"] == "ncnn":
            from buildsys.backends.ncnn import profile as profile_ncnn

            result = profile_ncnn(files["model.ncnn.param"], files["model.ncnn.bin"], sample,
                                  warmup=params["warmup"], runs=params["runs"],
                                  threads=ctx.threads)
        elif params["runtime"] == "executorch":
            from buildsys.backends.executorch import profile as profile_pte

            result = profile_pte(files["model.pte"], sample, warmup=params["warmup"],
                                 runs=params["runs"], threads=ctx.threads)
        else:
            from buildsys.backends.ort_runtime import profile

            result = profile(files["model.onnx"], sample, warmup=params["warmup"],
                             runs=params["runs"], level="basic", threads=ctx.threads)
        result["model_bytes"] = sum(p.stat().st_size for p in files.values())
        write_json(ctx.output("profile.json"), result)
        return result
