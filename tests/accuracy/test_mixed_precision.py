"""Mixed precision with ONNX Runtime's quantizer: named layers at 16-bit activations or float,
patterns that match nothing refused, and the mixed model accepted by QNN's HTP (compiled for
SM8550 and run on the simulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from buildsys.backends import qnn
from buildsys.backends.ort_quantize import quantize_qdq
from buildsys.backends.ort_runtime import optimize_model, run
from buildsys.backends.sensitivity import sqnr_db
from buildsys.errors import StageError
from tests.accuracy.outlier_model import build_model, write_photos


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("mixed")
    model = build_model(root / "model.onnx")
    samples = [{"image": (np.asarray(Image.open(p), np.float32) / 255).transpose(2, 0, 1)[None]
                .copy()} for p in write_photos(root / "photos", 10)]
    return model, samples


def quantizer_types(path: Path) -> dict[str, int]:
    """Quantized tensor → the integer type of its zero point (uint8 = 2, uint16 = 4)."""
    model = onnx.load(str(path))
    zero_points = {t.name: t.data_type for t in model.graph.initializer}
    return {n.input[0]: zero_points[n.input[2]] for n in model.graph.node
            if n.op_type == "QuantizeLinear"}


def test_named_layers_get_16_bit_activations_or_stay_float(
        data: tuple[Path, list[dict[str, np.ndarray]]], tmp_path: Path) -> None:
    model, samples = data
    mixed = tmp_path / "mixed.onnx"
    info = quantize_qdq(model, mixed, samples[:8], int16_layers=["mi?"])
    assert info["mixed"] == {"int16_tensors": ["mix_out"], "float_nodes": []}
    types = quantizer_types(mixed)
    assert types["mix_out"] == onnx.TensorProto.UINT16
    assert types["features_out"] == onnx.TensorProto.UINT8
    floating = tmp_path / "float_head.onnx"
    info = quantize_qdq(model, floating, samples[:8], float_layers=["head"])
    assert info["mixed"]["float_nodes"] == ["head"]
    head = next(n for n in onnx.load(str(floating)).graph.node if n.name == "head")
    # the head's weights stay float: no DequantizeLinear feeds its weight input
    assert head.input[1] == "w3"
    with pytest.raises(StageError, match="'neck' matches no layer"):
        quantize_qdq(model, tmp_path / "x.onnx", samples[:8], int16_layers=["neck"])


@pytest.mark.skipif(not qnn.is_available(), reason="onnxruntime-qnn not usable here")
def test_the_htp_runs_an_8_16_bit_mix(data: tuple[Path, list[dict[str, np.ndarray]]],
                                      tmp_path: Path) -> None:
    model, samples = data
    mixed = tmp_path / "mixed.onnx"
    quantize_qdq(model, mixed, samples[:8], int16_layers=["mix"])
    host, _ = run(mixed, samples[8:])
    local = tmp_path / "basic.onnx"
    optimize_model(mixed, local, level="basic")
    produced = qnn.compile_context_binary(local, tmp_path / "compiled", "sm8550")
    on_htp, _ = qnn.run_on_simulator(produced["model"], samples[8:], "sm8550")
    agreement = sqnr_db([h["logits"] for h in host], [next(iter(o.values())) for o in on_htp])
    assert agreement > 30, agreement
