"""Run the compiled artifact on the validation samples on its device; keep the outputs and
the wall time of each run (on the HTP simulator these timings are the only profile: it is a
slow, deterministic simulator, never phone latency)."""

from __future__ import annotations

import statistics
from typing import Any, ClassVar

from buildsys.stages._common import (
    RuntimeStage,
    compiled_inputs,
    load_samples,
    save_samples,
    write_json,
)
from buildsys.stages.base import StageContext

WHERE = {
    "host": "host CPU",
    "qnn-htp-simulator": "QNN HTP simulator on x86 (not device latency)",
}


class InferStage(RuntimeStage):
    kind: ClassVar[str] = "infer"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("outputs.npz", "infer.json")
    measurement_files: ClassVar[tuple[str, ...]] = ("infer.json",)

    @classmethod
    def resources(cls, params: dict[str, Any]) -> dict[str, float]:
        # A QNN context binary runs on the HTP simulator: only workers that have one.
        return {"htp_sim": 1} if params["runtime"] == "qnn_context_binary" else {}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        samples = load_samples(ctx.input("samples"))
        files = compiled_inputs(ctx)
        runtime = ctx.params["runtime"]
        if runtime == "qnn_context_binary":
            from buildsys.backends.qnn import run_on_simulator

            outputs, seconds = run_on_simulator(files["model_ctx.onnx"], samples,
                                                ctx.params["chipset"])
            detail = f"{WHERE['qnn-htp-simulator']}, {ctx.params['chipset']}"
        elif runtime == "tflite":
            from buildsys.backends.tflite import run

            reference = ctx.params.get("kernels") == "reference"
            outputs, seconds = run(files["model.tflite"], samples, reference_kernels=reference)
            detail = f"{WHERE['host']} (LiteRT interpreter" + (
                ", reference kernels)" if reference else ")")
        elif runtime == "ncnn":
            from buildsys.backends.ncnn import run as run_ncnn

            # One thread: the figures are about numbers (profile measures speed).
            outputs, seconds = run_ncnn(files["model.ncnn.param"], files["model.ncnn.bin"],
                                        samples, threads=1)
            detail = f"{WHERE['host']} (ncnn, fp32 arithmetic, 1 thread)"
        elif runtime == "executorch":
            from buildsys.backends.executorch import run as run_pte

            outputs, seconds = run_pte(files["model.pte"], samples, threads=1)
            detail = f"{WHERE['host']} (ExecuTorch, XNNPACK, 1 thread)"
        else:
            from buildsys.backends.ort_runtime import run

            # BASIC keeps Q/DQ nodes and computes in float: figures independent of the CPU.
            outputs, seconds = run(files["model.onnx"], samples, level="basic",
                                   threads=ctx.threads)
            detail = f"{WHERE['host']} (onnxruntime, ORT_ENABLE_BASIC, {ctx.threads} threads)"
        named = [dict(zip(ctx.params["io"]["outputs"], o.values(), strict=False))
                 for o in outputs]
        save_samples(named, ctx.output("outputs.npz"))
        timings = [s * 1000 for s in seconds]
        summary = {"where": detail, "runs": len(timings),
                   "latency_ms": {"median": statistics.median(timings), "min": min(timings),
                                  "max": max(timings)} if timings else None}
        write_json(ctx.output("infer.json"), summary)
        return summary
