"""The toolchains a build may need: their installed versions, and the extra that installs each.

`pip install modelbuild` is the engine alone (recipe, plan, store, executor, command steps);
every ML toolchain comes with an extra (`pip install 'modelbuild[torch]'`). A stage kind names
the distributions it imports (`Stage.requirements`); the planner asks `missing_extras` before
anything runs, so a recipe that needs an absent toolchain fails at plan time naming the extra.

Versions are read from installed distribution metadata: nothing here imports a toolchain.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import metadata

from buildsys.cuda_gpus import CUDA_GPU, gpu_class
from buildsys.numerics import ORT_KERNELS, SIMD_KERNELS, host_kernel_class, host_simd_class

NOT_INSTALLED = "not installed"

# Distribution -> the extra of pyproject.toml that installs it (a test keeps the two in step).
EXTRA_FOR: dict[str, str] = {
    "numpy": "onnx",
    "pillow": "onnx",
    "scikit-image": "onnx",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "torch": "torch",
    "onnxruntime-qnn": "qualcomm",
    "aimet-torch": "qualcomm",
    "qai-hub": "qualcomm",
    "litert-torch": "tflite",
    "ai-edge-litert": "tflite",
    "pnnx": "ncnn",
    "ncnn": "ncnn",
    "executorch": "executorch",
    "tensorrt": "tensorrt",
    "tensorflow-cpu": "tensorflow",
    "tf2onnx": "tensorflow",
    "matplotlib": "report",
    "jinja2": "report",
    "distributed": "dask",  # not a stage's tool: what --scheduler and --workers need
}


@cache
def tool_version(distribution: str) -> str:
    """The installed version of a distribution ("python" for the interpreter)."""
    if distribution == "python":
        return platform.python_version()
    if distribution == ORT_KERNELS:  # a CPU class, not a distribution (numerics.py)
        return host_kernel_class()
    if distribution in SIMD_KERNELS:
        return host_simd_class()
    if distribution == CUDA_GPU:  # the GPU model TensorRT engines are built for
        return gpu_class()
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def is_installed(distribution: str) -> bool:
    return tool_version(distribution) != NOT_INSTALLED


def missing_extras(distributions: Iterable[str]) -> dict[str, str]:
    """Each distribution that is not installed -> the extra to install for it."""
    return {d: EXTRA_FOR.get(d, d) for d in sorted(set(distributions)) if not is_installed(d)}


def check_tool_versions(promised: Mapping[str, str]) -> str | None:
    """Why this process must not run a stage whose key promised these tool versions, or
    None. A worker elsewhere (a cluster) may have other versions installed: running the stage
    there would store other bytes under a key that promises these."""
    differing = [(name, version) for name, version in sorted(promised.items())
                 if name != ORT_KERNELS and tool_version(name) != version]  # CPU: check_cpu_class
    if not differing:
        return None
    here = ", ".join(f"{name} {tool_version(name)}" for name, _ in differing)
    keyed = ", ".join(f"{name} {version}" for name, version in differing)
    return f"this worker has {here}, but the stage's key promises {keyed}: it refuses the stage"


def install_hint(extras: Iterable[str]) -> str:
    return f"pip install 'modelbuild[{','.join(sorted(set(extras)))}]'"
