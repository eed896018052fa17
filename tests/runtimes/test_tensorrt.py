"""TensorRT targets: an engine for this machine's NVIDIA GPU (fp16 from the float ONNX, int8
from the recipe's QDQ model), validated and profiled on it. Without a CUDA GPU the TensorRT
stages plan as "cannot run here" with the reason, demand no toolchain, and fail without
running while the rest of the recipe builds (--keep-going)."""

from __future__ import annotations

import json

import pytest

from buildsys.backends import tensorrt as trt_backend
from buildsys.cuda_gpus import why_no_gpu
from tests.conftest import Project, statuses

RECIPE = """\
recipe: trt
models:
  tiny:
    source: {python: "buildsys.zoo.tiny:tiny_convnet", seed: 0}
    inputs: {image: {shape: [1, 3, 32, 32]}}
    outputs: [logits]
    task: segmentation
datasets:
  photos: {random: {seed: 1}, calibration: 2, validation: 2}
quantization:
  w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}
targets:
  onnx: {runtime: onnx}
  trt: {runtime: tensorrt}
devices:
  host: {backend: host, profile: {warmup: 1, runs: 2}}
  gpu: {backend: cuda, profile: {warmup: 1, runs: 5}}
builds:
  - {model: tiny, quantization: float, target: onnx, device: host}
  - {model: tiny, quantization: [float, w8a8], target: trt, device: gpu}
validate: {dataset: photos, psnr_min_db: 25}
"""

TRT_COMPILES = {"tiny/float/trt@gpu/compile", "tiny/w8a8/trt@gpu/compile"}


@pytest.mark.skipif(why_no_gpu() is None, reason="this machine has a CUDA GPU")
def test_without_a_gpu_tensorrt_stages_cannot_run_here_and_the_rest_builds(
        project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    plan = project.run("recipe.yaml", "--plan", "--json", check=False)
    # Exit 0, not 2: the tensorrt package (absent here) is not demanded of stages that
    # cannot run here anyway.
    assert plan.returncode == 0, plan.stderr
    stages = {s["id"]: s for s in json.loads(plan.stdout)["stages"]}
    for stage_id in TRT_COMPILES:
        assert stages[stage_id]["status"] == "failed", stages[stage_id]
        assert stages[stage_id]["reason"].startswith(
            "cannot run here: TensorRT needs an NVIDIA GPU with CUDA: ")
    for q in ("float", "w8a8"):
        for kind in ("infer", "profile"):
            assert stages[f"tiny/{q}/trt/gpu/{kind}"]["status"] == "skipped"
            assert stages[f"tiny/{q}/trt/gpu/{kind}"]["reason"] == \
                f"upstream tiny/{q}/trt@gpu/compile fails"

    report = project.build("recipe.yaml", "--keep-going", check=False)
    assert report["process"].returncode == 1
    assert statuses(report, "failed") == TRT_COMPILES
    assert {"tiny/float/onnx/host/validate", "tiny/w8a8/quantize"} <= statuses(report, "built")


@pytest.mark.slow
@pytest.mark.skipif(not trt_backend.is_available(), reason="the tensorrt extra is not installed")
@pytest.mark.skipif(why_no_gpu() is not None, reason=f"cannot run here: {why_no_gpu()}")
def test_tensorrt_engines_build_and_validate_on_the_gpu(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build()
    assert report["ok"], report["process"].stderr
    rows = {r["id"]: r for r in json.loads(
        (project.root / "release/trt/index.json").read_text())["variants"]}
    assert rows["tiny/float/trt/gpu"]["psnr_db"]["logits"] > 40  # fp16 engine
    assert rows["tiny/w8a8/trt/gpu"]["psnr_db"]["logits"] > 25  # int8 engine
    assert "NVIDIA GPU" in rows["tiny/float/trt/gpu"]["latency_where"]
