"""Static post-training quantization to a QDQ ONNX model with ONNX Runtime's quantization tools.

`quantize_qdq` runs `quant_pre_process` (shape inference + ORT basic graph optimisation, which
folds the `Identity` nodes the torch exporter uses to share all-zero biases: without it
`quantize_static` leaves those biases float), calibrates on the given samples and writes a QDQ
model. With `for_qnn=True` the config comes from `get_qnn_qdq_config` (tensor overrides QNN's
HTP needs); otherwise plain `quantize_static` settings for ORT's CPU kernels.

Bit widths map to ONNX types like this (`info["types"]` records the result):

| setting        | for_qnn=True                      | for_qnn=False                     |
|----------------|-----------------------------------|-----------------------------------|
| activations 8  | uint8, asymmetric                 | uint8, asymmetric                 |
| activations 16 | uint16, asymmetric                | uint16, asymmetric                |
| weights 8      | int8, symmetric                   | int8, symmetric                   |
| weights 4      | int4, symmetric, per channel      | int4, symmetric, per channel      |

16-bit (and 4-bit) Q/DQ need opset 21; on an older opset the tools emit `com.microsoft`
QuantizeLinear/DequantizeLinear instead, which both the CPU EP and the QNN EP run. Checked with
onnxruntime 1.32 / onnxruntime-qnn 2.7: w8a8, w8a16, w4a8 and w4a16 QDQ models all compile for
the HTP and match the CPU EP on the simulator (~50 dB for 8-bit activations, 65-90 dB for 16-bit).
int4 weights are always per channel: per-tensor int4 loses too much.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.errors import StageError

WEIGHT_BITS = {"int8": 8, "int4": 4}
ACTIVATION_BITS = {"int8": 8, "int16": 16}
METHODS = ("minmax", "entropy", "percentile")


def _check_settings(weights: str, activations: str, method: str) -> None:
    if weights not in WEIGHT_BITS:
        raise StageError(
            f"quantization: weights={weights!r} is not supported by the onnxruntime engine; "
            f"use one of {sorted(WEIGHT_BITS)}"
        )
    if activations not in ACTIVATION_BITS:
        raise StageError(
            f"quantization: activations={activations!r} is not supported by the onnxruntime "
            f"engine; use one of {sorted(ACTIVATION_BITS)}"
        )
    if method not in METHODS:
        raise StageError(
            f"quantization: method={method!r} is unknown; use one of {list(METHODS)}"
        )


def _model_inputs(model: Any) -> dict[str, tuple[list[int | str | None], int]]:
    """Graph inputs that are not initializers: name -> (shape, ONNX elem type)."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[list[int | str | None], int]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[vi.name] = (dims, tt.elem_type)
    return out


def _check_calibration(
    src: Path, model: Any, calibration: list[dict[str, np.ndarray]]
) -> None:
    import onnx

    if not calibration:
        raise StageError(
            f"quantization of {src.name}: the calibration set is empty; give at least one sample"
        )
    inputs = _model_inputs(model)
    for i, sample in enumerate(calibration):
        if set(sample) != set(inputs):
            raise StageError(
                f"quantization of {src.name}: calibration sample {i} has inputs "
                f"{sorted(sample)}, the model expects {sorted(inputs)}"
            )
        for name, arr in sample.items():
            dims, elem = inputs[name]
            want = onnx.helper.tensor_dtype_to_np_dtype(elem)
            if np.asarray(arr).dtype != want:
                raise StageError(
                    f"quantization of {src.name}: calibration sample {i} input {name!r} has dtype "
                    f"{np.asarray(arr).dtype}, the model expects {want}"
                )
            shape = np.shape(arr)
            fixed_ok = len(shape) == len(dims) and all(
                not isinstance(d, int) or d == s for d, s in zip(dims, shape, strict=True)
            )
            if not fixed_ok:
                raise StageError(
                    f"quantization of {src.name}: calibration sample {i} input {name!r} has shape "
                    f"{list(shape)}, the model expects {dims}"
                )


class _ListReader:
    """CalibrationDataReader over an in-memory list (subclassed at call time, see _reader)."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._samples = samples
        self._it: Iterator[dict[str, np.ndarray]] = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._samples)


def _reader(samples: list[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_ListReader, CalibrationDataReader):
        pass

    return Reader([{k: np.ascontiguousarray(v) for k, v in s.items()} for s in samples])


def _node_counts(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(
        (f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in model.graph.node
    )
    produced_by_dq = {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    float_biases = [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm")
        and len(n.input) > 2
        and n.input[2]
        and n.input[2] not in produced_by_dq
    ]
    # ORT's optimiser (inside quant_pre_process) imports every domain it knows; keep the two
    # that matter for Q/DQ.
    opsets = {
        (o.domain or "ai.onnx"): o.version
        for o in model.opset_import
        if o.domain in ("", "ai.onnx", "com.microsoft")
    }
    return {
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "quantize_nodes": sum(v for k, v in ops.items() if k.endswith("QuantizeLinear")
                              and not k.endswith("DequantizeLinear")),
        "dequantize_nodes": sum(v for k, v in ops.items() if k.endswith("DequantizeLinear")),
        "unquantized_biases": sorted(float_biases),
        "opset": dict(sorted(opsets.items())),
    }


def quantize_qdq(
    src: Path,
    dst: Path,
    calibration: list[dict[str, np.ndarray]],
    *,
    weights: str = "int8",
    activations: str = "int8",
    method: str = "minmax",
    per_channel: bool = False,
    for_qnn: bool = True,
    int16_layers: list[str] | None = None,
    float_layers: list[str] | None = None,
) -> dict[str, Any]:
    """Quantize the float ONNX model `src` to a QDQ model at `dst`; returns a JSON-able info dict.

    `calibration` is a list of samples (input name -> array) fed through the model to collect
    activation ranges. The output bytes are a pure function of the inputs and settings (same
    onnxruntime version): calibration runs single-threaded with deterministic reductions.

    Mixed precision: `int16_layers` (node or output-tensor names, fnmatch patterns) get 16-bit
    activations through ORT's TensorQuantOverrides (the QNN config adds the Convert ops HTP
    needs between 8- and 16-bit tensors); `float_layers` are left unquantized
    (nodes_to_exclude). A pattern that matches nothing is an error naming it.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quant_pre_process

    src, dst = Path(src), Path(dst)
    _check_settings(weights, activations, method)
    if not src.is_file():
        raise StageError(f"quantization: model file {src} does not exist")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co.
        raise StageError(f"quantization: {src} is not a readable ONNX model ({e})") from e
    already = [n.op_type for n in model.graph.node if n.op_type in ("QuantizeLinear",
                                                                      "DequantizeLinear")]
    if already:
        raise StageError(
            f"quantization of {src.name}: the model already has {len(already)} "
            "QuantizeLinear/DequantizeLinear nodes; quantize the float model instead"
        )
    _check_calibration(src, model, calibration)
    del model

    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    act_type = QuantType.QUInt16 if activations == "int16" else QuantType.QUInt8
    wt_type = QuantType.QInt4 if weights == "int4" else QuantType.QInt8
    # Per-tensor int4 weights lose far too much accuracy: int4 is always per channel.
    use_per_channel = per_channel or weights == "int4"

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelbuild-quant-") as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "preprocessed.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as e:
            raise StageError(
                f"quantization of {src.name}: ONNX Runtime pre-processing (shape inference and "
                f"graph optimisation) failed: {e}"
            ) from e
        mixed = resolve_layers(pre, int16_layers or [], float_layers or [])
        reader = _reader(calibration)
        out_tmp = tmp / "quantized.onnx"
        # The histogram calibrators print progress to stdout: keep the worker's output clean.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                extra = _run_quantizer(
                    pre, out_tmp, reader, calib_method, act_type, wt_type, use_per_channel,
                    for_qnn, activations, mixed,
                )
        except StageError:
            raise
        except Exception as e:
            raise StageError(
                f"quantization of {src.name} (weights={weights}, activations={activations}, "
                f"method={method}) failed in onnxruntime.quantization: {e}"
            ) from e
        shutil.move(str(out_tmp), str(dst))

    info: dict[str, Any] = {
        "engine": "onnxruntime",
        "format": "QDQ",
        "weights": weights,
        "activations": activations,
        "method": method,
        "per_channel": use_per_channel,
        "for_qnn": for_qnn,
        "calibration_samples": len(calibration),
        "types": {
            "weights": wt_type.name,
            "activations": act_type.name,
            "weight_symmetric": True,
            "activation_symmetric": False,
        },
        "qdq_contrib_ops": bool(extra.get("UseQDQContribOps", False)),
    }
    if int16_layers or float_layers:
        info["mixed"] = {"int16_tensors": sorted(mixed["int16"]),
                         "float_nodes": sorted(mixed["float"])}
    info.update(_node_counts(dst))
    return info


def _default_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _run_quantizer(
    pre: Path,
    out: Path,
    reader: Any,
    calib_method: Any,
    act_type: Any,
    wt_type: Any,
    per_channel: bool,
    for_qnn: bool,
    activations: str,
    mixed: dict[str, list[str]],
) -> dict[str, Any]:
    """Calibrate + quantize `pre` into `out`; returns the extra_options used."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize, quantize_static

    # Overrides are keyed by tensor; 16-bit activations need opset 21 or the contrib Q/DQ.
    overrides = {name: [{"quant_type": QuantType.QUInt16}] for name in mixed["int16"]}
    exclude = list(mixed["float"]) or None

    if for_qnn:
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        cfg = get_qnn_qdq_config(
            str(pre),
            reader,
            calibrate_method=calib_method,
            activation_type=act_type,
            weight_type=wt_type,
            per_channel=per_channel,
            weight_symmetric=True,
            init_overrides=overrides or None,
            nodes_to_exclude=exclude,
        )
        quantize(str(pre), str(out), cfg)
        return dict(cfg.extra_options)
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if (activations == "int16" or overrides) and _default_opset(pre) < 21:
        extra["UseQDQContribOps"] = True
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=act_type,
        weight_type=wt_type,
        per_channel=per_channel,
        calibrate_method=calib_method,
        nodes_to_exclude=exclude,
        extra_options=extra,
    )
    return extra


def resolve_layers(model_path: Path, int16: list[str], floating: list[str]
                   ) -> dict[str, list[str]]:
    """Mixed-precision patterns → the tensors to quantize at 16 bits and the nodes to keep
    float. A pattern matches a node's name (then: its outputs) or a tensor's name."""
    import fnmatch

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    nodes = [(n.name, list(n.output)) for n in model.graph.node]
    resolved: dict[str, list[str]] = {"int16": [], "float": []}
    for kind, patterns in (("int16", int16), ("float", floating)):
        chosen: dict[str, None] = {}
        for pattern in patterns:
            before = len(chosen)
            for name, outputs in nodes:
                hits_node = bool(name) and fnmatch.fnmatchcase(name, pattern)
                hit_tensors = [o for o in outputs if fnmatch.fnmatchcase(o, pattern)]
                if kind == "float" and (hits_node or hit_tensors):
                    chosen.setdefault(name, None)
                elif kind == "int16":
                    for tensor in outputs if hits_node else hit_tensors:
                        chosen.setdefault(tensor, None)
            if len(chosen) == before and not any(
                    fnmatch.fnmatchcase(n, pattern) or any(fnmatch.fnmatchcase(o, pattern)
                                                           for o in outs)
                    for n, outs in nodes):
                examples = ", ".join(n for n, _ in nodes[:6] if n)
                raise StageError(f"quantization mixed {kind}: {pattern!r} matches no layer "
                                 f"(node or tensor name) of {model_path.name}; nodes are "
                                 f"named like {examples}")
        resolved[kind] = list(chosen)
    return resolved
