"""Small helpers shared by the model stages (files in, files out, no graph knowledge)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from buildsys.numerics import NCNN_KERNELS, ORT_KERNELS, XNNPACK_KERNELS
from buildsys.recipe.model_source import SOURCE_FILE_KEYS, input_name
from buildsys.stages.base import Stage, StageContext

PYTHON_TOOLS = ("python", "numpy")
# Computed with onnxruntime's CPU kernels: their bytes follow the CPU class (numerics.py).
ORT_TOOLS = ("onnx", "onnxruntime", ORT_KERNELS)
# What each target runtime's stages (compile, infer, profile) depend on.
RUNTIME_TOOLS = {
    "onnx": ORT_TOOLS,
    "qnn_context_binary": ("onnx", "onnxruntime", "onnxruntime-qnn"),
    "tflite": ("torch", "litert-torch", "ai-edge-litert"),
    "ncnn": ("torch", "pnnx", "ncnn"),
    "executorch": ("torch", "executorch"),
    "tensorrt": ("onnx", "tensorrt"),
}
# Runtimes whose kernels follow the CPU's SIMD class: the stages that run their models
# (infer, profile) carry it in their key; converting does not run them (numerics.py).
RUNTIME_KERNELS = {"ncnn": (NCNN_KERNELS,), "executorch": (XNNPACK_KERNELS,)}


class RuntimeStage(Stage):
    """A stage whose tools follow its `runtime` parameter."""

    max_threads = 2
    runs_model: ClassVar[bool] = True  # False: only converts (its bytes follow no kernels)

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        runtime = params["runtime"]
        kernels = RUNTIME_KERNELS.get(runtime, ()) if cls.runs_model else ()
        return (*PYTHON_TOOLS, *RUNTIME_TOOLS[runtime], *kernels)


def write_json(path: Path, value: Any) -> None:
    """Deterministic JSON: sorted keys, fixed float formatting by json itself."""
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def source_spec(ctx: StageContext) -> dict[str, Any]:
    """The recipe's model source with file flags replaced by this worker's input paths."""
    source = dict(ctx.params["source"])
    for key in SOURCE_FILE_KEYS:
        if source.get(key):
            source[key] = str(ctx.input(input_name(key)))
        else:
            source.pop(key, None)
    return source


def load_torch_model(ctx: StageContext) -> Any:
    import torch

    from buildsys.backends.torch_models import load_model
    from buildsys.numerics import TORCH_THREADS

    # Not ctx.threads: torch's results follow its thread count (buildsys/numerics.py).
    torch.set_num_threads(TORCH_THREADS)
    return load_model(source_spec(ctx), ctx.work_dir)


def example_inputs(io: dict[str, Any]) -> dict[str, Any]:
    """Zeros of the declared shapes: what export traces with (values do not matter)."""
    import numpy as np

    return {name: np.zeros(spec["shape"], dtype=spec["dtype"])
            for name, spec in io["inputs"].items()}


def load_samples(path: Path) -> list[dict[str, Any]]:
    from buildsys.data.datasets import load_samples_npz

    return load_samples_npz(path)


def save_samples(samples: list[dict[str, Any]], path: Path) -> None:
    from buildsys.data.datasets import save_samples as save

    save(samples, path)


def compiled_inputs(ctx: StageContext) -> dict[str, Path]:
    return {name.partition("/")[2]: path for name, path in ctx.inputs.items()
            if name.startswith("compiled/")}
