"""Fold inference BatchNormalization nodes into the Conv before them, in float64, rounded once.

torch's exporter folds them too, with `torch.sqrt`, whose MKL kernel rounds differently on
different CPUs even with the kernels pinned (1-ulp differences in the folded weights between
an AVX-512 machine and emulated SSE4.2 and AVX2 ones; see buildsys/numerics.py). Here every
folded value is computed in float64 with IEEE operations only (multiply, divide, square root,
add: correctly rounded on every CPU) and rounded to float32 once, so the exported model's
bytes are the same on every machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def fold_into_layer(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                    beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The float32 weight and bias of a layer (output channels first) with the inference
    BatchNorm after it folded in: computed in float64, rounded once."""
    mean, var = mean.astype(np.float64), var.astype(np.float64)
    factor = scale.astype(np.float64) / np.sqrt(var + np.float64(eps))
    weight64 = weight.astype(np.float64)
    bias64 = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
    new_weight = weight64 * factor.reshape((-1,) + (1,) * (weight64.ndim - 1))
    new_bias = (bias64 - mean) * factor + beta.astype(np.float64)
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def fold_batchnorms(model: Any) -> int:
    """Fold, in place, each BatchNormalization whose input is a Conv output used by nothing
    else (all parameters initializers, inference mode); returns how many were folded."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(o.name for o in graph.output)
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if not _foldable(bn, conv, inits, uses):
            continue
        scale, beta, mean, var = (numpy_helper.to_array(inits[name]) for name in bn.input[1:5])
        # float32(epsilon) is what ONNX Runtime adds; the attribute is stored as a float32.
        eps = float(np.float32(next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)))
        weight = numpy_helper.to_array(inits[conv.input[1]])
        bias = (numpy_helper.to_array(inits[conv.input[2]])
                if len(conv.input) > 2 and conv.input[2] else None)
        folded_params = fold_into_layer(weight, bias, scale, beta, mean, var, eps)
        stem = bn.output[0]
        names = (f"{stem}.folded_weight", f"{stem}.folded_bias")
        for name, value in zip(names, folded_params, strict=True):
            graph.initializer.append(numpy_helper.from_array(value, name))
        del conv.input[1:]
        conv.input.extend(names)
        intermediate = conv.output[0]
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        for value_info in [v for v in graph.value_info if v.name == intermediate]:
            graph.value_info.remove(value_info)
        folded += 1
    _drop_unused_initializers(graph)
    return folded


def _foldable(bn: Any, conv: Any, inits: dict[str, Any], uses: Counter[str]) -> bool:
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return False
    if uses[bn.input[0]] != 1 or len(bn.output) != 1 or len(bn.input) != 5:
        return False
    if any(a.name == "training_mode" and a.i for a in bn.attribute):
        return False
    params = [*bn.input[1:5], conv.input[1], *conv.input[2:3]]
    # Shared weights would change for their other users too.
    return all(p in inits and uses[p] == 1 for p in params if p)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    used.update(o.name for o in graph.output)
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
