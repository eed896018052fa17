"""CPU-independent numerics: what makes a stage's floating-point results the same bytes on any
x86-64 CPU (SSE4.2 to AVX-512, Intel or AMD) and any core count.

torch, oneDNN, MKL and numpy pick their kernels by the CPU they run on (AVX-512, AVX2, SSE),
and kernels of different widths round differently: the same seeded model gave other weights,
another exported ONNX and other reference outputs on an AVX2 machine than on an AVX-512 one.
Every stage worker therefore runs with these libraries held to the kernels that every x86-64
CPU has, and torch held to one thread (one thread and two threads pick different conv
algorithms; two and four agree). Proved by `tests/crosscpu/`, which rebuilds the CPU-sensitive
stages under `qemu-x86_64 -cpu Nehalem` and `-cpu Haswell` and compares every digest.

What cannot be pinned this way (onnxruntime's MLAS kernels; the QNN HTP tools are closed)
was measured instead; see the README's "Same bytes on every CPU".
"""

from __future__ import annotations

from collections.abc import MutableMapping

# Read by each library when it loads, so they must be in the environment before the worker
# imports anything numeric.
PINNED_KERNEL_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's own vectorised kernels: no AVX2/AVX-512 paths
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN convolution and matmul kernels
    "MKL_CBWR": "COMPATIBLE",  # MKL's conditional numerical reproducibility (SSE2 paths)
    # numpy ≥ 2.4's dispatched SIMD groups above its x86-64-v2 baseline (exp, log, reductions).
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}

# torch's intra-op threads in every stage that computes with torch.
TORCH_THREADS = 1

# Enters the version of every stage whose bytes these settings decide: change it when they
# change, and every such stage is rebuilt rather than mixed with bytes made under old settings.
NUMERICS = "pinned-1"


def pin_kernels(environ: MutableMapping[str, str]) -> None:
    """Hold the numeric libraries to CPU-independent kernels in `environ` (a worker's own
    `os.environ`, before it imports torch or numpy)."""
    environ.update(PINNED_KERNEL_ENV)
