"""ort_quantize on real onnxruntime.quantization with the tiny conv net from conftest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from buildsys.backends.ort_quantize import quantize_qdq
from buildsys.errors import StageError


def _q_types(path: Path) -> dict[str, set[int]]:
    """ONNX element types of the Q outputs (activations) and DQ inputs fed by initializers."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    act, wts = set(), set()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            act.add(inits[n.input[2]].data_type)
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            init = inits[n.input[0]]
            if init.data_type != onnx.TensorProto.INT32:  # skip biases
                wts.add(init.data_type)
    return {"activations": act, "weights": wts}


def test_module_import_is_cheap() -> None:
    code = (
        "import sys\n"
        "import buildsys.backends.ort_quantize, buildsys.backends.ort_runtime\n"
        "import buildsys.backends.qnn, buildsys.chipsets\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxruntime_qnn', 'torch')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_w8a8_accuracy_counts_and_biases(
    tiny_fp32, tiny_w8a8, held_out, psnr_db, cpu_reference, tmp_path
) -> None:
    info = quantize_qdq(tiny_fp32, tmp_path / "q.onnx", [held_out[0]] * 2)
    # The Identity-shared zero biases are quantized (quant_pre_process folded the Identities).
    assert info["unquantized_biases"] == []
    assert info["op_types"]["Conv"] == 3
    assert "Identity" not in info["op_types"] and "BatchNormalization" not in info["op_types"]
    assert info["quantize_nodes"] >= 1 and info["dequantize_nodes"] >= 6
    assert info["types"] == {
        "weights": "QInt8",
        "activations": "QUInt8",
        "weight_symmetric": True,
        "activation_symmetric": False,
    }
    assert info["calibration_samples"] == 2 and info["for_qnn"] is True

    types = _q_types(tiny_w8a8)
    assert types == {"activations": {onnx.TensorProto.UINT8}, "weights": {onnx.TensorProto.INT8}}
    ref = cpu_reference(tiny_fp32, held_out)
    got = cpu_reference(tiny_w8a8, held_out)
    for r, g in zip(ref, got, strict=True):
        assert psnr_db(r, g) > 30.0


def test_w8a16_uses_16_bit_qdq_and_is_accurate(
    tiny_fp32, tiny_w8a16, held_out, psnr_db, cpu_reference
) -> None:
    model = onnx.load(str(tiny_w8a16))
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    # 16-bit Q/DQ: either the com.microsoft contrib ops or standard ops at opset >= 21.
    assert all(n.domain == "com.microsoft" for n in qdq) or opset >= 21
    assert _q_types(tiny_w8a16)["activations"] == {onnx.TensorProto.UINT16}
    ref = cpu_reference(tiny_fp32, held_out)
    got = cpu_reference(tiny_w8a16, held_out)
    for r, g in zip(ref, got, strict=True):
        assert psnr_db(r, g) > 30.0


def test_cpu_flavour_per_channel(tiny_fp32, calibration, held_out, psnr_db, cpu_reference,
                                 tmp_path) -> None:
    dst = tmp_path / "cpu.onnx"
    info = quantize_qdq(tiny_fp32, dst, calibration, per_channel=True, for_qnn=False)
    assert info["for_qnn"] is False and info["per_channel"] is True
    model = onnx.load(str(dst))
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dq_w = [n for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    # Per-channel: one scale per output channel (8, 8 and 4 channels).
    assert sorted(tuple(inits[n.input[1]].dims) for n in dq_w) == [(4,), (8,), (8,)]
    ref = cpu_reference(tiny_fp32, held_out)
    got = cpu_reference(dst, held_out)
    for r, g in zip(ref, got, strict=True):
        assert psnr_db(r, g) > 30.0


@pytest.mark.parametrize(("activations", "for_qnn"), [("int16", True), ("int8", False)])
def test_int4_weights(tiny_fp32, calibration, held_out, cpu_reference, psnr_db, tmp_path,
                      activations, for_qnn) -> None:
    dst = tmp_path / "w4.onnx"
    info = quantize_qdq(tiny_fp32, dst, calibration, weights="int4", activations=activations,
                        method="percentile", for_qnn=for_qnn)
    # int4 is always per channel, even when per_channel=False was asked for.
    assert info["per_channel"] is True and info["types"]["weights"] == "QInt4"
    assert _q_types(dst)["weights"] == {onnx.TensorProto.INT4}
    ref = cpu_reference(tiny_fp32, held_out)[0]
    got = cpu_reference(dst, held_out)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert 10.0 < psnr_db(ref, got) < 40.0  # works, and clearly coarser than 8-bit weights


def test_same_inputs_same_bytes(tiny_fp32, calibration, tmp_path) -> None:
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    for dst in (a, b):
        quantize_qdq(tiny_fp32, dst, calibration, activations="int16", method="entropy")
    assert a.read_bytes() == b.read_bytes()
    # ... and different calibration data gives a different model (the test can fail).
    c = tmp_path / "c" / "m.onnx"
    quantize_qdq(tiny_fp32, c, calibration[:2], activations="int16", method="entropy")
    assert c.read_bytes() != a.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "int2"}, "weights='int2'"),
        ({"activations": "fp16"}, "activations='fp16'"),
        ({"method": "kl"}, "method='kl'"),
    ],
)
def test_bad_settings(tiny_fp32, calibration, tmp_path, kwargs, message) -> None:
    with pytest.raises(StageError, match=message):
        quantize_qdq(tiny_fp32, tmp_path / "x.onnx", calibration, **kwargs)


def test_bad_calibration_and_inputs(tiny_fp32, tiny_w8a8, calibration, tmp_path) -> None:
    with pytest.raises(StageError, match="empty"):
        quantize_qdq(tiny_fp32, tmp_path / "x.onnx", [])
    with pytest.raises(StageError, match="expects"):
        quantize_qdq(tiny_fp32, tmp_path / "x.onnx", [{"image": calibration[0]["x"]}])
    with pytest.raises(StageError, match=r"shape \[1, 3, 16, 16\]"):
        quantize_qdq(tiny_fp32, tmp_path / "x.onnx", [{"x": np.zeros((1, 3, 16, 16), "f4")}])
    with pytest.raises(StageError, match="float64"):
        quantize_qdq(tiny_fp32, tmp_path / "x.onnx", [{"x": calibration[0]["x"].astype("f8")}])
    with pytest.raises(StageError, match="already has"):
        quantize_qdq(tiny_w8a8, tmp_path / "x.onnx", calibration)
    with pytest.raises(StageError, match="does not exist"):
        quantize_qdq(tmp_path / "missing.onnx", tmp_path / "x.onnx", calibration)
    assert not (tmp_path / "x.onnx").exists()
