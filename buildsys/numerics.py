"""CPU-independent numerics: what makes a stage's floating-point results the same bytes on any
x86-64 CPU (SSE4.2 to AVX-512, Intel or AMD) and any core count.

torch, oneDNN, MKL and numpy pick their kernels by the CPU they run on (AVX-512, AVX2, SSE),
and kernels of different widths round differently: the same seeded model gave other weights,
another exported ONNX and other reference outputs on an AVX2 machine than on an AVX-512 one.
Every stage worker therefore runs with these libraries held to the kernels that every x86-64
CPU has, and torch held to one thread (one thread and two threads pick different conv
algorithms; two and four agree). One kernel escapes the pins: `torch.sqrt` goes to MKL's
vector math, which rounds differently on AVX-512, AVX2 and AMD CPUs whatever `MKL_CBWR` says,
so BatchNorm folding (the one place a build takes square roots) is done in float64 with numpy
instead. Proved by `tests/crosscpu/`, which rebuilds the CPU-sensitive stages under
`qemu-x86_64 -cpu EPYC` and `-cpu Nehalem` and compares every digest with the committed lock.

onnxruntime's MLAS kernels cannot be pinned: on every CPU with AVX2 and FMA (Haswell, Skylake,
AVX-512 Intel, AMD EPYC) they give the same bytes, without FMA (Nehalem, Sandy Bridge) others.
Stages whose bytes come from them carry that CPU class in their key as the pseudo-tool
`ORT_KERNELS`, so two classes never share a cache entry, and a worker whose CPU is of another
class than its stage's key refuses the stage (`check_cpu_class`).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, MutableMapping
from functools import cache

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


# A stage's tools name this pseudo-tool when its bytes come from onnxruntime's CPU kernels;
# its "version" is the CPU class those kernels follow.
ORT_KERNELS = "onnxruntime-cpu-kernels"


def _kernel_class(has_avx2_fma: bool) -> str:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine
    return "x86-64 with AVX2+FMA" if has_avx2_fma else "x86-64 without AVX2+FMA"


@cache
def _host_cpu_flags() -> frozenset[str]:
    """The CPU flags /proc/cpuinfo lists (read once: the planner asks on every build)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f
                                   if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def host_kernel_class() -> str:
    """This machine's class, from /proc/cpuinfo."""
    return _kernel_class({"avx2", "fma"} <= _host_cpu_flags())


def running_kernel_class() -> str:
    """The class of the CPU this process really runs on, asked with cpuid (through numpy), so
    an emulated CPU (`--run-under qemu-x86_64 -cpu …`) answers for itself; /proc/cpuinfo
    would describe the host."""
    from numpy._core._multiarray_umath import __cpu_features__

    return _kernel_class(bool(__cpu_features__.get("AVX2") and __cpu_features__.get("FMA3")))


# Runtimes that pick their kernels by the exact SIMD extensions of the CPU (ncnn's x86 layers
# and XNNPACK's microkernels: AVX-512, AVX2+FMA, AVX, SSE, VNNI variants) and round
# differently per kernel. Stages whose bytes come from them carry the CPU's SIMD class (a finer
# one than ORT's) as one of these pseudo-tools.
NCNN_KERNELS = "ncnn-cpu-kernels"
XNNPACK_KERNELS = "xnnpack-cpu-kernels"
# TensorFlow folds constants (BatchNorm into convolutions, …) with its own CPU kernels when
# tf2onnx or the TFLite converter convert a Keras model: the bytes differ between AVX-512 and
# AVX2 CPUs even with oneDNN off and pinned.
TENSORFLOW_KERNELS = "tensorflow-cpu-kernels"
SIMD_KERNELS = (NCNN_KERNELS, XNNPACK_KERNELS, TENSORFLOW_KERNELS)

# The extensions those kernels dispatch on: /proc/cpuinfo flag -> numpy's name for it.
_SIMD_FEATURES = (("avx", "AVX"), ("f16c", "F16C"), ("fma", "FMA3"), ("avx2", "AVX2"),
                  ("xop", "XOP"), ("avx512f", "AVX512F"), ("avx512cd", "AVX512CD"),
                  ("avx512bw", "AVX512BW"), ("avx512dq", "AVX512DQ"), ("avx512vl", "AVX512VL"),
                  ("avx512_vnni", "AVX512VNNI"), ("avx512_bf16", "AVX512BF16"),
                  ("avx512_fp16", "AVX512FP16"))


def _simd_class(present: set[str]) -> str:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine
    names = [flag for flag, _ in _SIMD_FEATURES if flag in present]
    return "x86-64 " + ("+".join(names) if names else "SSE only")


def host_simd_class() -> str:
    """This machine's SIMD class, from /proc/cpuinfo."""
    return _simd_class(set(_host_cpu_flags()))


def running_simd_class() -> str:
    """The SIMD class of the CPU this process runs on (cpuid through numpy, as above)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return _simd_class({flag for flag, key in _SIMD_FEATURES if __cpu_features__.get(key)})


def check_cpu_class(promised_tools: Mapping[str, str]) -> str | None:
    """Why this process must not run a stage whose key promised `promised_tools`, or None."""
    for tool, running in ((ORT_KERNELS, running_kernel_class),
                          *((name, running_simd_class) for name in SIMD_KERNELS)):
        promised = promised_tools.get(tool)
        if promised is None:
            continue
        here = running()
        if here != promised:
            return (f"this worker's CPU is {here}, but the stage's key promises {tool} of a "
                    f"CPU {promised}: they compute other bytes, so it refuses the stage")
    return None
