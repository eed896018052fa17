"""Which NVIDIA GPU this machine has, asked of the CUDA driver itself (libcuda through ctypes):
no toolkit, no torch, a few milliseconds, so the planner can ask on every build.

TensorRT engines are built for one GPU model (its compute capability) and one TensorRT
release: the GPU enters the key of every TensorRT stage as the pseudo-tool `CUDA_GPU`, and a
machine without a usable GPU plans those stages as "cannot run here" with `why_no_gpu`'s reason.
"""

from __future__ import annotations

import ctypes
from functools import cache

CUDA_GPU = "cuda-gpu"
NO_GPU = "none"


@cache
def _driver() -> tuple[ctypes.CDLL | None, str]:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, "no NVIDIA driver (libcuda.so.1 does not load)"
    code = lib.cuInit(0)
    if code != 0:
        return None, f"the NVIDIA driver found no usable GPU (cuInit error {code})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, "the NVIDIA driver reports no CUDA device"
    return lib, ""


def why_no_gpu() -> str | None:
    """Why no CUDA GPU can be used here, or None when device 0 is usable."""
    lib, reason = _driver()
    return None if lib is not None else reason


@cache
def gpu_class() -> str:
    """Device 0 as "<name>, sm_<major><minor>", or "none" without one."""
    lib, _ = _driver()
    if lib is None:
        return NO_GPU
    device = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(device), 0)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # COMPUTE_CAPABILITY_MINOR
    return f"{name.value.decode(errors='replace')}, sm_{major.value}{minor.value}"
