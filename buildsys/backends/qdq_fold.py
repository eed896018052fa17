"""Fold QuantizeLinear nodes on constant weights into quantized initializers.

AIMET's QDQ export keeps float weights behind a QuantizeLinear → DequantizeLinear pair. ORT runs
that, but the QNN HTP backend wants the weight already quantized (an integer initializer feeding
DequantizeLinear), as ORT's own quantizer writes it. Folding gives every later stage one format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along `axis`
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    # QuantizeLinear rounds half to even, as np.rint does.
    q = np.rint(x.astype(np.float64) / scale.astype(np.float64)) + zero_point.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantizers(src: Path, dst: Path) -> int:
    """Rewrite `src` to `dst` with constant-input QuantizeLinear nodes folded; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    constants = _constants(graph)
    folded: list[Any] = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 3 or not all(name in constants for name in node.input[:3]):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            continue  # blocked quantization: leave it to the runtime
        x, scale, zero_point = (constants[n] for n in node.input[:3])
        q = _quantize(x, scale, zero_point, axis if axis >= 0 else axis + x.ndim)
        graph.initializer.append(numpy_helper.from_array(q, name=node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unused_initializers(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(folded)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
