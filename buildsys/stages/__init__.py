"""Registry of stage kinds. Modules are imported on first use, so looking up a kind is cheap."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from buildsys.stages.base import Stage

STAGE_CLASSES = {
    "command": "buildsys.stages.command:CommandStage",
    "dataset": "buildsys.stages.dataset:DatasetStage",
    "capture": "buildsys.stages.capture:CaptureStage",
    "export": "buildsys.stages.export:ExportStage",
    "optimize": "buildsys.stages.optimize:OptimizeStage",
    "reference": "buildsys.stages.reference:ReferenceStage",
    "quantize": "buildsys.stages.quantize:QuantizeStage",
    "compile": "buildsys.stages.compile:CompileStage",
    "profile": "buildsys.stages.profile:ProfileStage",
    "infer": "buildsys.stages.infer:InferStage",
    "validate": "buildsys.stages.validate:ValidateStage",
    "package": "buildsys.stages.package:PackageStage",
    "release": "buildsys.stages.release:ReleaseIndexStage",
    "sensitivity": "buildsys.stages.sensitivity:SensitivityStage",
    "score": "buildsys.stages.score:ScoreStage",
    "select_quantization": "buildsys.stages.select_quantization:SelectQuantizationStage",
    "aihub_compile": "buildsys.stages.aihub:AIHubCompileStage",
    "aihub_quantize": "buildsys.stages.aihub:AIHubQuantizeStage",
    "aihub_link": "buildsys.stages.aihub:AIHubLinkStage",
    "aihub_infer": "buildsys.stages.aihub:AIHubInferStage",
    "tensorrt_compile": "buildsys.stages.tensorrt:TensorRTCompileStage",
    "tensorrt_infer": "buildsys.stages.tensorrt:TensorRTInferStage",
    "tensorrt_profile": "buildsys.stages.tensorrt:TensorRTProfileStage",
}


def lock_notes(kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a stage kind wants written into the lock beside its digests."""
    if kind not in STAGE_CLASSES:
        return {}
    return {k: metrics[k] for k in stage_class(kind).lock_notes if k in metrics}


@cache
def stage_class(kind: str) -> type[Stage]:
    module_name, _, class_name = STAGE_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
