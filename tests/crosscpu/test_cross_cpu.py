"""The committed lock holds on other CPUs: the tiny recipe's CPU-sensitive stages, rebuilt from
an empty store natively and under `qemu-x86_64 -cpu EPYC` (AMD, AVX2 + FMA, no AVX-512) and
`-cpu Nehalem` (Intel, SSE4.2, no FMA), each compared digest for digest with
`recipes/tiny.lock` by `--check`.

Emulation is ≈ 10× slower and every worker imports its libraries again, so this covers what
the CPU decides — the dataset tensors (numpy, Pillow), the seeded model and its ONNX export,
the fp32 reference and AIMET's calibration (torch, pinned kernels), and what onnxruntime's
kernels compute (ORT calibration, host inference: the same on every CPU with AVX2 + FMA,
refused, never recorded, on a CPU without) — and runs the two emulated CPUs side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                       reason="qemu-x86_64 (Debian qemu-user) is not installed; .ci/run "
                              "installs it"),
]

PINNED = ["data/*", "tiny/export", "tiny/reference", "tiny/w8a16/quantize"]
ORT_KERNELS = ["tiny/w8a8/quantize", "tiny/float/onnx/host/infer", "tiny/w8a8/onnx/host/infer"]


def _start(root: Path, patterns: list[str], cpu: str | None, jobs: int) -> subprocess.Popen[str]:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("tiny.yaml", "tiny.lock"):
        shutil.copy(REPO / "recipes" / name, root / name)
    under = ["--run-under", f"qemu-x86_64 -cpu {cpu}"] if cpu else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MODELBUILD_CACHE_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "buildsys", "tiny.yaml", *patterns, "--check", "-j", str(jobs),
         "--cache-dir", str(root / "store"), *under],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=1800)
    return process.returncode, "\n".join(line for line in stderr.splitlines()
                                         if "TCG doesn't support" not in line)


def test_native_build_matches_the_committed_lock(tmp_path: Path) -> None:
    code, stderr = _finish(_start(tmp_path, PINNED + ORT_KERNELS, None, jobs=2))
    assert code == 0, stderr[-4000:]
    assert " 0 cached" in stderr, stderr[-2000:]  # all built here, from an empty store


def test_emulated_cpus_match_the_committed_lock(tmp_path: Path) -> None:
    amd = _start(tmp_path / "EPYC", PINNED + ORT_KERNELS, "EPYC", jobs=1)
    old = _start(tmp_path / "Nehalem", PINNED, "Nehalem", jobs=1)
    for cpu, process in (("EPYC", amd), ("Nehalem", old)):
        code, stderr = _finish(process)
        assert code == 0, f"{cpu}:\n{stderr[-4000:]}"
        assert " 0 cached" in stderr, f"{cpu}:\n{stderr[-2000:]}"
    # The key of an ORT-computed stage names the coordinator's CPU class (AVX2+FMA); a worker
    # on a CPU without FMA would compute other bytes under it, so it refuses the stage.
    code, stderr = _finish(_start(tmp_path / "Nehalem", ["tiny/w8a8/quantize"], "Nehalem",
                                  jobs=1))
    assert code == 1, stderr[-2000:]
    assert "tiny/w8a8/quantize" in stderr and "refuses the stage" in stderr, stderr[-2000:]
    assert "x86-64 without AVX2+FMA" in stderr, stderr[-2000:]
