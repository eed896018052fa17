"""AIMET quantization backend on a tiny real conv net, checked with a real ORT session."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.backends.aimet_quant import quantize_aimet
from buildsys.errors import StageError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("aimet_torch", reason="aimet-torch is not installed")

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 32, 32)


def make_net() -> torch.nn.Module:
    """conv-BN-ReLU x2 with seeded weights and non-trivial BN statistics (so folding matters)."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return net.eval()


def make_data() -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], np.ndarray]:
    rng = np.random.default_rng(0)
    example = {"image": rng.standard_normal(SHAPE, dtype=np.float32)}
    calibration = [{"image": rng.standard_normal(SHAPE, dtype=np.float32)} for _ in range(8)]
    held_out = rng.standard_normal(SHAPE, dtype=np.float32)
    return example, calibration, held_out


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    peak = float(np.max(np.abs(ref)))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in sess.get_inputs()]
    return sess.run(None, {name: x})[0]


def zero_point_types(path: Path) -> dict[str, str]:
    model = onnx.load(str(path))
    return {
        i.name: onnx.TensorProto.DataType.Name(i.data_type)
        for i in model.graph.initializer
        if i.name.endswith("_zero_point")
    }


@pytest.fixture(scope="module")
def w8a16(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("w8a16")
    net = make_net()
    state = copy.deepcopy(net.state_dict())
    example, calibration, held_out = make_data()
    threads = torch.get_num_threads()
    dst = out_dir / "tiny_w8a16.onnx"
    info = quantize_aimet(
        net, example, calibration, dst, weights_bw=8, activations_bw=16,
        input_names=["image"], output_names=["logits"],
    )
    return {"net": net, "state": state, "dst": dst, "info": info, "held_out": held_out,
            "threads": threads, "dir": out_dir}


def test_w8a16_qdq_onnx_matches_torch_in_ort(w8a16: dict) -> None:
    net, dst, x = w8a16["net"], w8a16["dst"], w8a16["held_out"]
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {21}
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "BatchNormalization" not in ops  # folded into the convs
    zps = zero_point_types(dst)
    assert zps["image_zero_point"] == "UINT16"  # 16-bit activations
    assert {t for n, t in zps.items() if n.endswith("weight_zero_point")} == {"INT8"}

    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = ort_run(dst, x)
    assert out.shape == ref.shape
    assert psnr(ref, out) > 35.0


def test_info_dict(w8a16: dict) -> None:
    import aimet_torch

    info = w8a16["info"]
    assert info["quant_scheme"] == "tf_enhanced"
    assert (info["weights_bw"], info["activations_bw"]) == (8, 16)
    assert info["config"] == "htp_v73"
    assert info["aimet_version"] == aimet_torch.__version__
    assert info["num_folded_batch_norms"] == 2
    assert info["num_param_quantizers"] == 2  # one per conv weight
    assert info["num_quantizers"] == info["num_param_quantizers"] + info[
        "num_activation_quantizers"
    ]
    assert info["num_activation_quantizers"] >= 2  # at least model input and output
    assert info["calibration_samples"] == 8
    assert info["output_names"] == ["logits"]


def test_caller_model_threads_and_directory_untouched(w8a16: dict) -> None:
    net = w8a16["net"]
    state = net.state_dict()
    assert state.keys() == w8a16["state"].keys()
    assert all(torch.equal(state[k], w8a16["state"][k]) for k in state)
    assert isinstance(net[1], torch.nn.BatchNorm2d)  # not folded in the caller's model
    assert torch.get_num_threads() == w8a16["threads"]
    assert sorted(p.name for p in w8a16["dir"].iterdir()) == ["tiny_w8a16.onnx"]
    assert str(w8a16["dir"]).encode() not in w8a16["dst"].read_bytes()


def test_w4a16_int4_weights(tmp_path: Path, w8a16: dict) -> None:
    net = make_net()
    example, calibration, x = make_data()
    dst = tmp_path / "w4a16.onnx"
    info = quantize_aimet(net, example, calibration, dst, weights_bw=4, activations_bw=16)
    assert info["weights_bw"] == 4
    assert info["output_names"] == ["output"]  # default name for a single output
    zps = zero_point_types(dst)
    assert {t for n, t in zps.items() if n.endswith("weight_zero_point")} == {"INT4"}
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    p4 = psnr(ref, ort_run(dst, x))
    p8 = psnr(ref, ort_run(w8a16["dst"], x))
    assert 25.0 < p4 < p8  # coarser weights: still usable, but worse than 8-bit


def test_min_max_and_config_file_path(tmp_path: Path) -> None:
    from aimet_torch.common.quantsim_config import quantsim_config

    src = Path(quantsim_config.__file__).parent / "htp_quantsim_config_v75.json"
    cfg = tmp_path / "my_config.json"
    cfg.write_bytes(src.read_bytes())
    net = make_net()
    example, calibration, x = make_data()
    dst = tmp_path / "w8a8.onnx"
    info = quantize_aimet(
        net, example, calibration, dst, activations_bw=8, quant_scheme="min_max",
        config=str(cfg),
    )
    assert info["config"] == "my_config.json"
    assert info["config_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert zero_point_types(dst)["image_zero_point"] == "UINT8"
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert psnr(ref, ort_run(dst, x)) > 30.0


def test_unknown_config_alias_lists_valid_ones(tmp_path: Path) -> None:
    example, calibration, _ = make_data()
    with pytest.raises(StageError) as err:
        quantize_aimet(make_net(), example, calibration, tmp_path / "x.onnx", config="htp_v99")
    msg = str(err.value)
    assert "'htp_v99'" in msg
    for alias in ("htp_v66", "htp_v73", "htp_v81"):
        assert alias in msg
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"weights_bw": 6}, "weights_bw 6"),
        ({"activations_bw": 4}, "activations_bw 4"),
        ({"quant_scheme": "percentile"}, "quant_scheme 'percentile'"),
        ({"opset": 17}, "opset 17"),
        ({"config": "missing_dir/cfg.json"}, "does not exist"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    example, calibration, _ = make_data()
    with pytest.raises(StageError, match=fragment):
        quantize_aimet(make_net(), example, calibration, tmp_path / "x.onnx", **kwargs)


def test_calibration_shape_mismatch(tmp_path: Path) -> None:
    example, calibration, _ = make_data()
    calibration[3] = {"image": np.zeros((1, 3, 16, 16), np.float32)}
    with pytest.raises(StageError, match=r"calibration sample 3 input 'image'"):
        quantize_aimet(make_net(), example, calibration, tmp_path / "x.onnx")
    with pytest.raises(StageError, match="calibration is empty"):
        quantize_aimet(make_net(), example, [], tmp_path / "x.onnx")


_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("t", {test_file!r})
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    example, calibration, _ = t.make_data()
    t.quantize_aimet(t.make_net(), example, calibration, Path(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_bytes_deterministic_across_fresh_processes(tmp_path: Path) -> None:
    """Same inputs in two fresh processes, different output names/dirs -> identical bytes."""
    script = tmp_path / "build.py"
    script.write_text(_SCRIPT.format(test_file=str(Path(__file__).resolve())))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outputs = []
    for sub, name in (("a", "model.onnx"), ("b", "other_name.onnx")):
        (tmp_path / sub).mkdir()
        dst = tmp_path / sub / name
        proc = subprocess.run(
            [sys.executable, str(script), str(dst)], cwd=tmp_path / sub, env=env,
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(dst.read_bytes())
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == [name]
    assert outputs[0] == outputs[1]
