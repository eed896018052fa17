"""Per-layer quantization sensitivity of a QDQ ONNX model (which activation quantizer hurts).

For every activation quantizer (a QuantizeLinear on a computed tensor, with its
DequantizeLinear), the model is run with *only that one* quantizer active and every other
activation quantizer bypassed (weights stay as quantized; a bypassed quantizer still clamps to
its range, see `isolate`); its outputs are compared with those of the model with every
activation quantizer bypassed. This is the per-layer analysis of
AIMET's QuantAnalyzer ("enable one quantizer at a time"); unlike a tensor-by-tensor comparison
of the two models (ORT's `qdq_loss_debug`), errors do not pile up towards the last layers, so
the ranking points at the layer to repair rather than at the output. The figure is the SQNR of
all outputs together, in dB (higher is better): 10·log10(Σ ref² / Σ (ref − out)²).

Runs on ORT's CPU EP at ORT_ENABLE_BASIC (Q/DQ kept, arithmetic in float), so the figures do
not depend on the build machine's CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.errors import StageError

SQNR_CAP_DB = 300.0


def activation_quantizers(model: Any) -> list[dict[str, str]]:
    """Activation quantizers in graph order: the float tensor, its Q node and producer."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear"
                  for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    dequantized = {n.input[0]: n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear"}
    found = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        tensor = node.input[0]
        if tensor in dq_outputs:  # a Convert (8 ↔ 16 bit) of a tensor already listed
            continue
        source = producer.get(tensor)
        # A graph output keeps its name on the DequantizeLinear; the float tensor the
        # quantizer reads was renamed: report the name the float model knows.
        after = dequantized.get(node.output[0], "")
        name = after if after in outputs else tensor
        found.append({"tensor": name, "quantizer_input": tensor,
                      "node": source.name if source is not None else "",
                      "op_type": source.op_type if source is not None else (
                          "graph input" if tensor in inputs else "?"),
                      "quantize_node": node.name})
    return found


def isolate(model: Any, keep: set[str]) -> Any:
    """A copy of the QDQ model whose activation quantizers all stop rounding, except the ones
    of the tensors in `keep` (Convert chains included).

    A bypassed quantizer becomes a Clip to the range its integers can represent: ORT's
    quantizer drops a ReLU (or Clip) whose range the QuantizeLinear already clamps to, so
    passing the tensor through unclamped would change the function, not the precision."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    values = {t.name: t for t in graph.initializer}
    constants = set(values) | {o for n in graph.node if n.op_type == "Constant"
                               for o in n.output}
    quantize_of = {n.output[0]: n for n in graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in constants}
    # A kept tensor keeps its whole chain: Q → DQ (→ Q → DQ …) down from that tensor.
    kept_q: set[str] = set()
    dq_by_input = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    for q_out, q in quantize_of.items():
        if q.input[0] in keep:
            kept_q.add(q.name)
            nxt = dq_by_input.get(q_out)
            while nxt is not None:
                chained = [c for c in quantize_of.values() if c.input[0] == nxt.output[0]]
                if not chained:
                    break
                kept_q.add(chained[0].name)
                nxt = dq_by_input.get(chained[0].output[0])
    new_nodes = []
    dropped = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in quantize_of and \
                node.name not in kept_q:
            dropped.add(node.output[0])
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in dropped:
            quantizer = quantize_of[node.input[0]]
            low, high = _representable(quantizer, values, numpy_helper)
            bounds = [f"{node.output[0]}__low", f"{node.output[0]}__high"]
            graph.initializer.extend([
                numpy_helper.from_array(np.asarray(low, np.float32), bounds[0]),
                numpy_helper.from_array(np.asarray(high, np.float32), bounds[1])])
            new_nodes.append(onnx.helper.make_node(
                "Clip", [quantizer.input[0], *bounds], list(node.output),
                name=f"{node.name}_unrounded"))
            continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return copy


def _representable(quantizer: Any, values: dict[str, Any], numpy_helper: Any
                   ) -> tuple[float, float]:
    """The float range a per-tensor QuantizeLinear's integer type covers."""
    scale = numpy_helper.to_array(values[quantizer.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(values[quantizer.input[2]]) if len(quantizer.input) > 2 \
        and quantizer.input[2] else np.zeros((), np.uint8)
    if scale.size != 1:
        raise StageError(f"{quantizer.name}: per-axis activation quantization is not "
                         "supported by the sensitivity analysis")
    info = np.iinfo(zero.dtype)
    offset = float(zero.reshape(()))
    return (info.min - offset) * float(scale.reshape(())), \
        (info.max - offset) * float(scale.reshape(()))


def sqnr_db(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((r.astype(np.float64) - a) ** 2))
                for r, a in zip(reference, actual, strict=True))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def layer_sensitivity(qdq_path: Path, samples: list[dict[str, np.ndarray]], work_dir: Path,
                      threads: int = 1) -> dict[str, Any]:
    """Every activation quantizer's isolated effect on the outputs, worst (lowest SQNR) first."""
    import onnx

    from buildsys.backends.ort_runtime import run

    model = onnx.load(str(qdq_path))
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise StageError(f"{qdq_path.name} has no activation QuantizeLinear nodes: it is not a "
                         "QDQ model (sensitivity needs a quantized model)")

    def outputs_with(keep: set[str], name: str) -> list[np.ndarray]:
        path = work_dir / name
        onnx.save(isolate(model, keep), str(path))
        produced, _ = run(path, samples, level="basic", threads=threads)
        path.unlink()
        return [np.concatenate([np.ravel(v) for v in out.values()]) for out in produced]

    baseline = outputs_with(set(), "no_activation_quantizers.onnx")
    every = outputs_with({q["quantizer_input"] for q in quantizers}, "all_quantizers.onnx")
    layers = []
    for index, quantizer in enumerate(quantizers):
        actual = outputs_with({quantizer["quantizer_input"]}, f"only_{index}.onnx")
        layers.append({**quantizer, "sqnr_db": round(sqnr_db(baseline, actual), 2),
                       "graph_index": index})
    layers.sort(key=lambda layer: (layer["sqnr_db"], layer["graph_index"]))
    for rank, layer in enumerate(layers, 1):
        layer["rank"] = rank
    return {
        "method": "one activation quantizer at a time vs none (weights quantized in both); "
                  "SQNR of all outputs, dB; onnxruntime CPU, ORT_ENABLE_BASIC",
        "samples": len(samples),
        "all_activation_quantizers_sqnr_db": round(sqnr_db(baseline, every), 2),
        "layers": layers,
    }
