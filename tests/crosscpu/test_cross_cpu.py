"""The committed lock holds on other CPUs: the tiny recipe's CPU-sensitive stages, rebuilt from
an empty store natively and under `qemu-x86_64 -cpu Haswell` (AVX2 + FMA, no AVX-512) and
`-cpu Nehalem` (SSE4.2, no FMA), each compared digest for digest with `recipes/tiny.lock`
(made on an AVX-512 + VNNI machine) by `--check`.

Emulation is ≈ 10× slower and every worker imports its libraries again, so this covers what
the CPU decides: the dataset tensors (numpy, Pillow), the seeded model and its ONNX export,
the fp32 reference and AIMET's calibration (torch, pinned kernels), and what onnxruntime's
kernels compute (ORT calibration, host inference), which holds for every CPU with AVX2 + FMA
and is refused, never recorded, on a CPU without.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                       reason="qemu-x86_64 (Debian qemu-user) is not installed; .ci/run "
                              "installs it"),
]

PINNED = ["data/*", "tiny/export", "tiny/reference", "tiny/w8a16/quantize"]
ORT_KERNELS = ["tiny/w8a8/quantize", "tiny/float/onnx/host/infer", "tiny/w8a8/onnx/host/infer"]


def _project(root: Path) -> Project:
    root.mkdir(parents=True)
    for name in ("tiny.yaml", "tiny.lock"):
        shutil.copy(REPO / "recipes" / name, root / name)
    return Project(root)


def _check(project: Project, patterns: list[str], cpu: str | None
           ) -> subprocess.CompletedProcess[str]:
    under = ["--run-under", f"qemu-x86_64 -cpu {cpu}"] if cpu else []
    return project.run("tiny.yaml", *patterns, "--check", "-j", "2", "--cache-dir",
                       str(project.root / "store"), *under, check=False, timeout=1800)


@pytest.mark.parametrize("cpu", [None, "Haswell"], ids=["native", "Haswell"])
def test_cpu_sensitive_stages_match_the_committed_lock(tmp_path: Path, cpu: str | None) -> None:
    result = _check(_project(tmp_path / (cpu or "native")), PINNED + ORT_KERNELS, cpu)
    assert result.returncode == 0, result.stderr[-4000:]
    # Everything selected was built here (the store started empty) and matched the lock.
    assert "0 cached" in result.stderr, result.stderr[-2000:]


def test_cpu_without_fma_matches_pinned_stages_and_refuses_ort_ones(tmp_path: Path) -> None:
    project = _project(tmp_path / "Nehalem")
    result = _check(project, PINNED, "Nehalem")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "0 cached" in result.stderr, result.stderr[-2000:]
    # The key of an ORT-computed stage names the coordinator's CPU class (AVX2+FMA); a worker
    # on a CPU without FMA would compute other bytes under it, so it refuses.
    refused = _check(project, ["tiny/w8a8/quantize"], "Nehalem")
    assert refused.returncode == 1
    assert "tiny/w8a8/quantize" in refused.stderr
    assert "x86-64 without AVX2+FMA" in refused.stderr and "refuses the stage" in refused.stderr
