"""Recipes for the NCNN / ExecuTorch targets: impossible combinations are reported at load
time with their place, a missing toolchain at plan time naming its extra, and the stages that
run those models are keyed by the CPU's SIMD class (their kernels follow it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsys.errors import RecipeError
from buildsys.numerics import NCNN_KERNELS, XNNPACK_KERNELS, check_cpu_class, host_simd_class
from buildsys.plan.graph import build_graph
from buildsys.recipe.load import load_recipe
from buildsys.stages import stage_class
from tests.conftest import Project
from tests.packaging.test_missing_toolchain import modelbuild, site_packages_without

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
recipe: rt
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
  w8a8_xnnpack: {engine: pt2e, weights: int8, activations: int8, calibration: photos}
targets:
  onnx: {runtime: onnx}
  ncnn: {runtime: ncnn}
  executorch: {runtime: executorch}
devices:
  host: {backend: host}
builds:
  - {model: tiny, quantization: float, target: ncnn, device: host}
  - {model: tiny, quantization: [float, w8a8_xnnpack], target: executorch, device: host}
validate: {dataset: photos}
"""


def problems_of(project: Project, text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(project.write("recipe.yaml", text))
    return info.value.problems


def test_impossible_scheme_and_target_pairs_are_reported_with_their_place(
        project: Project) -> None:
    text = (GOOD.replace("target: ncnn, device: host}",
                         "target: ncnn, device: host}\n"
                         "  - {model: tiny, quantization: w8a8, target: [ncnn, executorch], "
                         "device: host}\n"
                         "  - {model: tiny, quantization: w8a8_xnnpack, target: onnx, "
                         "device: host}")
            .replace("onnx: {runtime: onnx}", "onnx: {runtime: onnx, storage: fp16}")
            .replace("engine: pt2e, weights: int8, activations: int8",
                     "engine: pt2e, weights: int8, activations: int16"))
    problems = "\n".join(problems_of(project, text))
    assert "ncnn target 'ncnn' converts the float torch model" in problems
    assert "ncnn2int8" in problems
    assert "executorch target 'executorch' quantizes the torch model itself: scheme 'w8a8' " \
           "must have engine: pt2e" in problems
    assert "scheme 'w8a8_xnnpack' (engine pt2e) quantizes for ExecuTorch: target 'onnx'" \
        in problems
    assert "targets.onnx.storage: storage is how an ncnn .bin stores weights" in problems
    assert "engine pt2e (ExecuTorch's XNNPACK quantizer) makes w8a8 only" in problems
    assert "recipe.yaml:22:" in problems  # the offending builds entry, by line


def test_running_stages_are_keyed_by_the_simd_class_and_converting_is_not(
        project: Project) -> None:
    graph = build_graph(load_recipe(project.write("recipe.yaml", GOOD)))
    tools = {s: stage_class(d["node"].kind).tool_names(d["node"].params)
             for s, d in graph.nodes(data=True)}
    assert NCNN_KERNELS in tools["tiny/float/ncnn/host/infer"]
    assert NCNN_KERNELS in tools["tiny/float/ncnn/host/profile"]
    assert XNNPACK_KERNELS in tools["tiny/w8a8_xnnpack/executorch/host/infer"]
    assert not {NCNN_KERNELS, XNNPACK_KERNELS} & set(tools["tiny/float/ncnn/compile"])
    assert not {NCNN_KERNELS, XNNPACK_KERNELS} & set(
        tools["tiny/w8a8_xnnpack/executorch/compile"])
    # PT2E calibrates inside the compile stage, on the scheme's calibration split.
    compile_inputs = graph.nodes["tiny/w8a8_xnnpack/executorch/compile"]["node"].inputs
    assert compile_inputs["calibration"].stage == "data/photos/calibration@tiny"


def test_a_worker_on_another_simd_class_refuses_the_stage() -> None:
    here = host_simd_class()
    assert check_cpu_class({NCNN_KERNELS: here, XNNPACK_KERNELS: here}) is None
    refusal = check_cpu_class({NCNN_KERNELS: "x86-64 avx+f16c+fma+avx2"}
                              if "avx512f" in here else {NCNN_KERNELS: here + "+avx512f"})
    assert refusal is not None and "ncnn-cpu-kernels" in refusal


def test_a_recipe_needing_ncnn_without_it_fails_at_plan_time_naming_the_extra(
        tmp_path: Path) -> None:
    site = site_packages_without("ncnn", tmp_path / "site")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "recipe.yaml").write_text(GOOD)
    result = modelbuild(f"{REPO}{os.pathsep}{site}", tmp_path / "p", "recipe.yaml", "--plan")
    assert result.returncode == 2, result.stderr
    assert "ncnn (extra 'ncnn')" in result.stderr
    assert "pip install 'modelbuild[ncnn]'" in result.stderr
    assert not (tmp_path / "p" / "build").exists()
