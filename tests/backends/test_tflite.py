"""tflite backend: litert-torch conversion and the LiteRT interpreter, on a tiny real conv net."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.backends import tflite
from buildsys.errors import StageError

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 32, 32)

needs_litert = pytest.mark.skipif(
    not tflite.is_available(),
    reason="litert-torch / ai-edge-litert not installed (pip install 'modelbuild[tflite]')",
)


def make_net():  # -> torch.nn.Module
    import torch
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
    return net.eval()


def make_data() -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], np.ndarray]:
    rng = np.random.default_rng(0)
    example = {"image": rng.standard_normal(SHAPE, dtype=np.float32)}
    calibration = [{"image": rng.standard_normal(SHAPE, dtype=np.float32)} for _ in range(8)]
    return example, calibration, rng.standard_normal(SHAPE, dtype=np.float32)


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(float(np.max(np.abs(ref))) ** 2 / mse)


def torch_ref(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not tflite.is_available():
        pytest.skip("litert-torch not installed")
    net = make_net()
    example, _, held_out = make_data()
    dst = tmp_path_factory.mktemp("tfl") / "tiny.tflite"
    info = tflite.convert(net, example, dst)
    return {"net": net, "dst": dst, "info": info, "x": held_out}


@needs_litert
def test_float_convert_matches_torch(float_model: dict) -> None:
    dst, info, x = float_model["dst"], float_model["info"], float_model["x"]
    assert dst.read_bytes()[4:8] == b"TFL3"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["tiny.tflite"]
    assert info["quantize"] == "none" and info["size_bytes"] == dst.stat().st_size
    assert info["inputs"] == [
        {"name": "args_0", "tensor": info["inputs"][0]["tensor"], "shape": [1, 3, 32, 32],
         "dtype": "float32"}
    ]
    assert info["outputs"][0]["shape"] == [1, 8, 32, 32]  # NCHW kept
    outs, lat = tflite.run(dst, [{"image": x}, {"image": x * 0.5}])
    assert len(outs) == len(lat) == 2 and all(t > 0 for t in lat)
    assert list(outs[0]) == ["output_0"]
    for out, scale in zip(outs, (1.0, 0.5), strict=True):
        ref = torch_ref(float_model["net"], x * np.float32(scale))
        assert out["output_0"].dtype == np.float32
        assert psnr(ref, out["output_0"]) > 60.0


@needs_litert
def test_reference_kernels_compute_the_same_model(float_model: dict) -> None:
    """Validation runs LiteRT's reference kernels (the same bytes on every CPU, unlike
    XNNPACK's): the same model, the same numbers to float rounding, not XNNPACK's path."""
    dst, x = float_model["dst"], float_model["x"]
    (fast,), _ = tflite.run(dst, [{"image": x}])
    (ref,), _ = tflite.run(dst, [{"image": x}], reference_kernels=True)
    np.testing.assert_allclose(ref["output_0"], fast["output_0"], rtol=1e-4, atol=1e-5)
    assert psnr(torch_ref(float_model["net"], x), ref["output_0"]) > 60.0
    again, _ = tflite.run(dst, [{"image": x}], reference_kernels=True)
    np.testing.assert_array_equal(again[0]["output_0"], ref["output_0"])


@needs_litert
def test_int8_with_calibration(tmp_path: Path, float_model: dict) -> None:
    import torch

    net = make_net()
    example, calibration, x = make_data()
    dst = tmp_path / "tiny_int8.tflite"
    threads = torch.get_num_threads()
    info = tflite.convert(net, example, dst, quantize="int8", calibration=calibration)
    assert torch.get_num_threads() == threads
    assert info["quantize"] == "int8" and info["calibration_samples"] == 8
    assert info["inputs"][0]["dtype"] == "int8" and info["inputs"][0]["scale"] > 0
    assert info["outputs"][0]["dtype"] == "int8"
    assert info["size_bytes"] < float_model["info"]["size_bytes"]
    (out,), _ = tflite.run(dst, [{"image": x}])
    ref = torch_ref(net, x)
    p = psnr(ref, out["output_0"])
    assert 30.0 < p < psnr(ref, tflite.run(float_model["dst"], [{"image": x}])[0][0]["output_0"])


@needs_litert
def test_int8_without_calibration_is_a_clear_error(tmp_path: Path) -> None:
    example, _, _ = make_data()
    with pytest.raises(StageError, match="tflite int8 needs a calibration set"):
        tflite.convert(make_net(), example, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(StageError, match="quantize='fp16'"):
        tflite.convert(make_net(), example, tmp_path / "m.tflite", quantize="fp16")
    assert list(tmp_path.iterdir()) == []


@needs_litert
def test_run_rejects_bad_samples(float_model: dict, tmp_path: Path) -> None:
    x = float_model["x"]
    with pytest.raises(StageError, match=r"shape \[1, 3, 16, 16\]"):
        tflite.run(float_model["dst"], [{"image": x[..., :16, :16]}])
    with pytest.raises(StageError, match="2 input"):
        tflite.run(float_model["dst"], [{"a": x, "b": x}])
    with pytest.raises(StageError, match="does not exist"):
        tflite.run(tmp_path / "nope.tflite", [{"image": x}])
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(StageError, match="cannot load"):
        tflite.run(tmp_path / "junk.tflite", [{"image": x}])


@needs_litert
def test_profile(float_model: dict) -> None:
    prof = tflite.profile(float_model["dst"], {"image": float_model["x"]}, warmup=2, runs=7,
                          threads=1)
    assert prof["where"] == "host CPU (LiteRT interpreter)"
    lat = prof["latency_ms"]
    assert lat["runs"] == 7 and 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert prof["load_time_ms"] > 0 and prof["warmup_runs"] == 2 and prof["threads"] == 1
    assert prof["peak_memory_mb"] > 10
    with pytest.raises(StageError, match="runs >= 1"):
        tflite.profile(float_model["dst"], {"image": float_model["x"]}, runs=0)


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *a, **k):
        return None if name in ("litert_torch", "ai_edge_litert") else real(name, *a, **k)

    monkeypatch.setattr(tflite.importlib.util, "find_spec", fake)
    assert tflite.is_available() is False
    example, _, _ = make_data()
    with pytest.raises(StageError, match=r"pip install 'modelbuild\[tflite\]'"):
        tflite.convert(object(), example, tmp_path / "m.tflite")  # type: ignore[arg-type]
    with pytest.raises(StageError, match=r"pip install 'modelbuild\[tflite\]'"):
        tflite.run(tmp_path / "m.tflite", [])


_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("t", {test_file!r})
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    example, calibration, _ = t.make_data()
    q = None if sys.argv[2] == "none" else sys.argv[2]
    t.tflite.convert(t.make_net(), example, Path(sys.argv[1]), quantize=q,
                     calibration=calibration)
    """
)


@needs_litert
@pytest.mark.slow
def test_bytes_deterministic_across_fresh_processes(tmp_path: Path) -> None:
    script = tmp_path / "build.py"
    script.write_text(_SCRIPT.format(test_file=str(Path(__file__).resolve())))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for mode in ("none", "int8"):
        blobs = []
        for sub in ("a", "b"):
            d = tmp_path / mode / sub
            d.mkdir(parents=True)
            dst = d / f"{sub}_{mode}.tflite"
            proc = subprocess.run([sys.executable, str(script), str(dst), mode], cwd=d, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            blobs.append(dst.read_bytes())
        assert blobs[0] == blobs[1], mode
