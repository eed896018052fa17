"""Shared fixtures for the ORT / QNN backend tests: a tiny conv net built with onnx.helper.

The net mimics what the torch exporter produces for conv-BN-ReLU blocks with all-zero biases:
both 3x3 convs read their bias through an `Identity` of one shared initializer (the trap that
leaves biases float unless `quant_pre_process` runs), followed by BatchNormalization.
Heavy imports stay inside the fixtures (other tests in this folder check import costs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SHAPE = (1, 3, 32, 32)


def _build_tiny(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(w.astype(np.float32), name)

    def bn(prefix: str, c: int) -> list[onnx.TensorProto]:
        return [
            numpy_helper.from_array(rng.uniform(0.8, 1.2, c).astype(np.float32), f"{prefix}_g"),
            numpy_helper.from_array(rng.uniform(-0.1, 0.1, c).astype(np.float32), f"{prefix}_b"),
            numpy_helper.from_array(rng.uniform(-0.1, 0.1, c).astype(np.float32), f"{prefix}_m"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}_v"),
        ]

    inits = [
        weight("w1", (8, 3, 3, 3)),
        weight("w2", (8, 8, 3, 3)),
        weight("w3", (4, 8, 1, 1)),
        numpy_helper.from_array(np.zeros(8, np.float32), "zero_bias"),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, 4).astype(np.float32), "b3"),
        *bn("bn1", 8),
        *bn("bn2", 8),
    ]
    nodes = [
        helper.make_node("Identity", ["zero_bias"], ["b1"], name="bias_share_1"),
        helper.make_node("Identity", ["zero_bias"], ["b2"], name="bias_share_2"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["n1"], name="bn1"
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c2", "bn2_g", "bn2_b", "bn2_m", "bn2_v"], ["n2"], name="bn2"
        ),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelbuild-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def smooth_image(seed: int) -> dict[str, np.ndarray]:
    """A smooth RGB-like input in [0, 1]: a few low-frequency sinusoids per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, SHAPE[2]), np.linspace(0, 1, SHAPE[3]), indexing="ij")
    chans = []
    for _ in range(SHAPE[1]):
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        chans.append(0.5 + 0.5 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph))
    return {"x": np.stack(chans)[None].astype(np.float32)}


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the reference's peak absolute value as the signal peak."""
    ref = np.asarray(reference, np.float64)
    mse = float(np.mean((ref - np.asarray(test, np.float64)) ** 2))
    peak = float(np.max(np.abs(ref)))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    _build_tiny(path)
    return path


@pytest.fixture(scope="session")
def calibration() -> list[dict[str, np.ndarray]]:
    return [smooth_image(seed) for seed in range(4)]


@pytest.fixture(scope="session")
def held_out() -> list[dict[str, np.ndarray]]:
    return [smooth_image(seed) for seed in (100, 101)]


@pytest.fixture(scope="session")
def psnr_db() -> Callable[[np.ndarray, np.ndarray], float]:
    return psnr


@pytest.fixture(scope="session")
def tiny_w8a8(
    tiny_fp32: Path,
    calibration: list[dict[str, np.ndarray]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from buildsys.backends.ort_quantize import quantize_qdq

    dst = tmp_path_factory.mktemp("w8a8") / "tiny_w8a8.onnx"
    quantize_qdq(tiny_fp32, dst, calibration, weights="int8", activations="int8")
    return dst


@pytest.fixture(scope="session")
def tiny_w8a16(
    tiny_fp32: Path,
    calibration: list[dict[str, np.ndarray]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from buildsys.backends.ort_quantize import quantize_qdq

    dst = tmp_path_factory.mktemp("w8a16") / "tiny_w8a16.onnx"
    quantize_qdq(tiny_fp32, dst, calibration, weights="int8", activations="int16")
    return dst


@pytest.fixture(scope="session")
def cpu_reference() -> Callable[[Path, list[dict[str, np.ndarray]]], list[np.ndarray]]:
    """Outputs of a model on the CPU EP at ORT_ENABLE_BASIC (the validation level)."""

    def run(path: Path, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [sess.run(None, s)[0] for s in samples]

    return run
