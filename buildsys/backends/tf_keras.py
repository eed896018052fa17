"""Keras models (a `.keras` file) -> fp32 ONNX with tf2onnx, and -> .tflite with TensorFlow's
TFLite converter.

Optional backend: ``pip install 'modelbuild[tensorflow]'`` (tensorflow-cpu, tf2onnx; they
co-install with the protobuf 6.31.1 that qai-hub pins). TensorFlow is imported inside the
functions, with its oneDNN graph rewrites off (they pick kernels by the CPU) and its log
chatter down.

TensorFlow folds constants with kernels it picks by the CPU: the ONNX and .tflite bytes of one
Keras file differ between an AVX-512 and an AVX2 CPU (measured natively vs emulated Haswell),
so the stages that convert carry the SIMD class in their key (numerics.TENSORFLOW_KERNELS).

Keras keeps its own layout (usually NHWC): the recipe declares the model's input shapes as
Keras sees them, and datasets use ``preprocess: {layout: NHWC}``. ONNX inputs take the recipe's
input names (in the model's input order), outputs the recipe's output names.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.errors import StageError

INSTALL_HINT = "pip install 'modelbuild[tensorflow]'"


def is_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2onnx"))


def _tensorflow() -> Any:
    if importlib.util.find_spec("tensorflow") is None:
        raise StageError(f"Keras sources need TensorFlow: {INSTALL_HINT}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def load_keras(path: Path) -> Any:
    tf = _tensorflow()
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise StageError(f"Keras cannot load {Path(path).name}: {type(e).__name__}: "
                         f"{str(e)[:500]}") from e


def _check_io(model: Any, example: dict[str, np.ndarray], outputs: list[str]) -> None:
    shapes = [tuple(t.shape) for t in model.inputs]
    if len(shapes) != len(example):
        raise StageError(f"the Keras model has {len(shapes)} input(s); the recipe declares "
                         f"{len(example)} ({list(example)})")
    for (name, a), shape in zip(example.items(), shapes, strict=True):
        if len(shape) != a.ndim or any(d is not None and d != n
                                       for d, n in zip(shape, a.shape, strict=True)):
            raise StageError(f"input {name!r}: the recipe declares {list(a.shape)}, the Keras "
                             f"model takes {[d if d is not None else '?' for d in shape]} "
                             "(Keras layouts are usually NHWC)")
    if len(model.outputs) != len(outputs):
        raise StageError(f"the Keras model has {len(model.outputs)} output(s); the recipe "
                         f"declares {len(outputs)} ({outputs})")


def to_onnx(path: Path, example_inputs: dict[str, np.ndarray], outputs: list[str], dst: Path,
            opset: int) -> dict[str, Any]:
    """The Keras model as fp32 ONNX at ``dst``; an info dict with how far ONNX Runtime's
    outputs are from Keras's on the example inputs (a conversion check)."""
    tf = _tensorflow()
    import onnx
    import tf2onnx

    model = load_keras(path)
    example = {k: np.ascontiguousarray(v) for k, v in example_inputs.items()}
    _check_io(model, example, outputs)
    spec = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype), name=name)
                 for name, a in example.items())
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    except Exception as e:
        raise StageError(f"tf2onnx could not convert {Path(path).name}: {type(e).__name__}: "
                         f"{str(e)[:500]}") from e
    _rename_outputs(proto.graph, outputs)
    proto.producer_version = ""  # no build-machine detail in the bytes
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    rng = np.random.default_rng(0)
    probe = {n: rng.random(a.shape, dtype=np.float32).astype(a.dtype) for n, a in example.items()}
    expected = model(list(probe.values()) if len(probe) > 1 else next(iter(probe.values())))
    expected = expected if isinstance(expected, list | tuple) else [expected]
    from buildsys.backends.ort_runtime import run

    got, _ = run(Path(dst), [probe], level="basic", threads=1)
    error = max(float(np.max(np.abs(np.asarray(e) - g))) for e, g in
                zip(expected, got[0].values(), strict=True))
    if not np.isfinite(error):
        raise StageError(f"{Path(path).name}: Keras or its ONNX export computes non-finite "
                         "outputs on a probe input (uniform in [0, 1)); check the model's "
                         "weights (e.g. a negative BatchNorm variance)")
    return {"converter": f"tf2onnx {tf2onnx.__version__}", "tensorflow": tf.__version__,
            "opset": opset, "parameters": int(model.count_params()),
            "keras_vs_onnx_max_abs_error": float(f"{error:.4g}")}


def _rename_outputs(graph: Any, names: list[str]) -> None:
    for value, name in zip(graph.output, names, strict=True):
        old = value.name
        if old == name:
            continue
        for node in graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        value.name = name


def to_tflite(path: Path, dst: Path) -> dict[str, Any]:
    """The Keras model as float .tflite (TensorFlow's TFLite converter), at ``dst``."""
    tf = _tensorflow()
    model = load_keras(path)
    try:
        data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as e:
        raise StageError(f"the TFLite converter could not convert {Path(path).name}: "
                         f"{type(e).__name__}: {str(e)[:500]}") from e
    Path(dst).write_bytes(data)
    return {"format": "tflite", "converter": f"tensorflow {tf.__version__} TFLiteConverter",
            "size_bytes": len(data)}
