"""NCNN (pnnx) and ExecuTorch (XNNPACK) targets on the host: the tiny torch model through
compile → infer → validate → profile → package, in one real build; then the artifacts are
rebuilt in fresh workers and must be the same bytes (the lock's --check)."""

from __future__ import annotations

import json
import tarfile

import pytest

from buildsys.backends import executorch as et_backend
from buildsys.backends import ncnn as ncnn_backend
from tests.conftest import Project, statuses

pytestmark = [pytest.mark.slow]

RECIPE = """\
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
  w8a8_xnnpack: {engine: pt2e, weights: int8, activations: int8, calibration: photos}
targets:
  ncnn: {runtime: ncnn}
  ncnn_fp32: {runtime: ncnn, storage: fp32}
  executorch: {runtime: executorch}
devices:
  host: {backend: host, profile: {warmup: 1, runs: 2}}
builds:
  - {model: tiny, quantization: float, target: [ncnn, ncnn_fp32], device: host}
  - {model: tiny, quantization: [float, w8a8_xnnpack], target: executorch, device: host}
validate: {dataset: photos, psnr_min_db: 25}
"""


@pytest.mark.skipif(not (ncnn_backend.is_available() and et_backend.is_available()),
                    reason="needs the ncnn and executorch extras")
def test_ncnn_and_executorch_variants_build_validate_and_reproduce(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    report = project.build()
    assert report["ok"], report["process"].stderr
    rows = {r["id"]: r for r in json.loads(
        (project.root / "release/rt/index.json").read_text())["variants"]}
    psnr = {vid: row["psnr_db"]["logits"] for vid, row in rows.items()}
    # fp32 weights: only float reassociation separates ncnn from torch; fp16 storage costs
    # tens of dB; XNNPACK float ≈ torch; w8a8 is a real quantization (well below float).
    assert psnr["tiny/float/ncnn_fp32/host"] > 100
    assert 50 < psnr["tiny/float/ncnn/host"] < psnr["tiny/float/ncnn_fp32/host"]
    assert psnr["tiny/float/executorch/host"] > 100
    assert 25 < psnr["tiny/w8a8_xnnpack/executorch/host"] < 60
    assert "ncnn" in rows["tiny/float/ncnn/host"]["latency_where"]
    assert "ExecuTorch" in rows["tiny/float/executorch/host"]["latency_where"]

    build = project.root / "build/rt/tiny"
    fp16_bin = (build / "float/ncnn/compile/model.ncnn.bin").stat().st_size
    fp32_bin = (build / "float/ncnn_fp32/compile/model.ncnn.bin").stat().st_size
    assert fp16_bin < 0.55 * fp32_bin  # half-size weights (fp32 biases, per-layer tags)
    param = (build / "float/ncnn/compile/model.ncnn.param").read_text()
    assert param.startswith("7767517") and "Convolution" in param
    pte = (build / "w8a8_xnnpack/executorch/compile/model.pte").read_bytes()
    assert pte[4:8] == b"ET12"  # ExecuTorch's flatbuffer file identifier
    archive = project.root / "release/rt/rt-tiny-float-ncnn-host.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"model/model.ncnn.param", "model/model.ncnn.bin", "manifest.json"} <= names

    # The validation figures come from kernels that follow the CPU's SIMD class: the keys
    # of the stages that run the model say which class made them.
    explain = project.run("recipe.yaml", "--explain", "tiny/float/ncnn/host/infer").stdout
    assert "ncnn-cpu-kernels" in explain
    explain = project.run("recipe.yaml", "--explain", "tiny/float/ncnn/compile").stdout
    assert "ncnn-cpu-kernels" not in explain

    again = project.build()
    assert statuses(again, "built") == set()
    # Converting again in fresh workers gives the same bytes: the lock holds, and nothing
    # downstream runs again (early cutoff).
    forced = project.build("recipe.yaml", "--force", "tiny/float/ncnn/compile", "--force",
                           "tiny/w8a8_xnnpack/executorch/compile", "--check")
    assert forced["ok"], forced["process"].stderr
    assert statuses(forced, "built") == {"tiny/float/ncnn/compile",
                                         "tiny/w8a8_xnnpack/executorch/compile"}
