"""A model's `source:` in a recipe: which keys name files, and which make a torch model.

The one place these lists live: the recipe checks, the planner and the stages all ask here.
"""

from __future__ import annotations

from typing import Any

# Keys whose values are project files; they enter a stage as inputs named `source/<key>`.
SOURCE_FILE_KEYS = ("weights", "torchscript", "onnx", "exported_program", "keras")
# Keys that give a torch module (anything else is an ONNX file).
TORCH_SOURCE_KEYS = ("python", "torchscript", "exported_program", "qai_hub_models")


def source_files(source: dict[str, Any]) -> dict[str, str]:
    """The file-naming keys this source sets, with their recipe paths."""
    return {key: source[key] for key in SOURCE_FILE_KEYS if source.get(key)}


def is_torch(source: dict[str, Any]) -> bool:
    return any(key in source for key in TORCH_SOURCE_KEYS)


def is_keras(source: dict[str, Any]) -> bool:
    """A Keras model file: exported to ONNX by tf2onnx, converted to TFLite by TensorFlow."""
    return bool(source.get("keras"))


def input_name(key: str) -> str:
    """The name a source file has among a stage's inputs."""
    return f"source/{key}"
