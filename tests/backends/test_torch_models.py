"""torch_models on real torch / onnx / onnxruntime with the tiny zoo models."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from buildsys.backends import torch_models as tm
from buildsys.errors import StageError
from buildsys.zoo.tiny import tiny_classifier, tiny_convnet

REPO = Path(__file__).resolve().parents[2]
TINY = "buildsys.zoo.tiny:tiny_convnet"


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test) ** 2))
    peak = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def image(seed: int = 0, shape: tuple[int, ...] = (1, 3, 64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --- load_model -------------------------------------------------------------------------------


def test_module_import_is_cheap() -> None:
    code = ("import sys, buildsys.backends.torch_models, buildsys.data.datasets; "
            "print(sorted(m for m in ('torch', 'onnx', 'aimet_torch', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_python_source_seed_and_kwargs(tmp_path: Path) -> None:
    model = tm.load_model({"python": TINY, "seed": 2, "kwargs": {"num_classes": 6}}, tmp_path)
    assert not model.training
    ref = tiny_convnet(2, num_classes=6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  ref.state_dict().values(), strict=True))


def test_python_source_from_project_dir(tmp_path: Path) -> None:
    (tmp_path / "my_tiny_models_x.py").write_text(textwrap.dedent("""
        from buildsys.zoo.tiny import tiny_classifier

        def net(width=8):
            return tiny_classifier(7, width=width)

        def not_a_model():
            return 3
    """))
    model = tm.load_model({"python": "my_tiny_models_x:net", "kwargs": {"width": 4}}, tmp_path)
    assert forward(model, image()).shape == (1, 10)
    assert str(tmp_path) not in sys.path  # only on sys.path during the import
    with pytest.raises(StageError, match="does not take a 'seed'"):
        tm.load_model({"python": "my_tiny_models_x:net", "seed": 1}, tmp_path)
    with pytest.raises(StageError, match=r"returned int, not a torch\.nn\.Module"):
        tm.load_model({"python": "my_tiny_models_x:not_a_model"}, tmp_path)
    with pytest.raises(StageError, match="has no attribute 'nope'"):
        tm.load_model({"python": "my_tiny_models_x:nope"}, tmp_path)
    with pytest.raises(StageError, match="module 'no_such_module_zz' not found"):
        tm.load_model({"python": "no_such_module_zz:net"}, tmp_path)


def test_weights_round_trip_with_wrappers(tmp_path: Path) -> None:
    trained = tiny_convnet(9)
    state = {f"module.{k}": v for k, v in trained.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")
    model = tm.load_model({"python": TINY, "seed": 0, "weights": "w.pt"}, tmp_path)
    x = image()
    np.testing.assert_array_equal(forward(model, x), forward(trained, x))


def test_strict_load_names_file_and_keys(tmp_path: Path) -> None:
    state = tiny_convnet(0).state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(2)
    state["head.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StageError) as info:
        tm.load_model({"python": TINY, "weights": "bad.pth"}, tmp_path)
    message = str(info.value)
    assert "bad.pth" in message
    assert "missing keys: head.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "head.weight (file (3, 16, 1, 1), model (4, 16, 1, 1))" in message


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"missing\.pt does not exist"):
        tm.load_model({"python": TINY, "weights": "missing.pt"}, tmp_path)


class _Payload:
    """Unpickling this runs code: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned.txt"
    payload = {"head.weight": _Payload(marker)}
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    # The payload is real: a plain unpickle would run it (checked on a separate copy).
    if writer == "pickle":
        probe = tmp_path / "probe.txt"
        pickle.loads(pickle.dumps({"x": _Payload(probe)}))
        assert probe.exists()
    with pytest.raises(StageError, match=r"evil\.pt is not a plain state dict and is refused"):
        tm.load_model({"python": TINY, "weights": str(path)}, tmp_path)
    assert not marker.exists()


def test_pickled_whole_model_and_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    torch.save(tiny_convnet(0), tmp_path / "whole.pt")
    with pytest.raises(StageError, match=r"refused.*TinyConvNet.*model\.state_dict\(\)"):
        tm.load_model({"python": TINY, "weights": "whole.pt"}, tmp_path)
    torch.save({"head.weight": torch.zeros(4, 16, 1, 1), "lr": 0.1}, tmp_path / "mixed.pt")
    with pytest.raises(StageError, match="not a plain state dict: 1 entries that are not"):
        tm.load_model({"python": TINY, "weights": "mixed.pt"}, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(StageError, match=r"junk\.pt"):
        tm.load_model({"python": TINY, "weights": "junk.pt"}, tmp_path)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_and_exported_program_sources(tmp_path: Path) -> None:
    ref = tiny_convnet(4)
    x = image(1)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(ref, (torch.from_numpy(x),)), tmp_path / "m.ts")
    info = tm.capture(ref, {"image": x}, tmp_path / "m.pt2")
    assert info == {"format": "exported_program", "path": str(tmp_path / "m.pt2")}
    for source in ({"torchscript": "m.ts"}, {"exported_program": "m.pt2"}):
        model = tm.load_model(source, tmp_path)
        np.testing.assert_allclose(forward(model, x), forward(ref, x), rtol=0, atol=1e-6)


def test_bad_source_files(tmp_path: Path) -> None:
    (tmp_path / "junk.ts").write_bytes(b"junk")
    with pytest.raises(StageError, match=r"torchscript .*junk\.ts could not be loaded"):
        tm.load_model({"torchscript": "junk.ts"}, tmp_path)
    with pytest.raises(StageError, match=r"junk\.ts is not a torch\.export"):
        tm.load_model({"exported_program": "junk.ts"}, tmp_path)
    with pytest.raises(StageError, match="exactly one of"):
        tm.load_model({"python": TINY, "torchscript": "junk.ts"}, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("qai_hub_models") is not None,
                    reason="qai_hub_models is installed")
def test_qai_hub_models_without_the_package(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"pip install qai-hub-models.*python: .*weights"):
        tm.load_model({"qai_hub_models": "ffnet_40s"}, tmp_path)


# --- capture ---------------------------------------------------------------------------------


class _DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # torch.export cannot capture this; tracing records one branch
            return x * 2
        return x - 1


def test_capture_falls_back_to_torchscript(tmp_path: Path) -> None:
    x = image()
    info = tm.capture(_DataDependent(), {"x": x}, tmp_path / "dd.pt2")
    assert info["format"] == "torchscript"
    assert info["path"] == str(tmp_path / "dd.pt")
    assert info["export_error"]
    assert not (tmp_path / "dd.pt2").exists()
    np.testing.assert_array_equal(forward(tm.load_captured(tmp_path / "dd.pt"), x), x * 2)


# --- ONNX export -----------------------------------------------------------------------------


def test_export_onnx_checked_named_and_matches_torch(tmp_path: Path) -> None:
    model = tiny_convnet(0)
    dst = tmp_path / "model.onnx"
    info = tm.export_onnx(model, {"image": np.zeros((1, 3, 64, 64), np.float32)}, ["logits"],
                          dst, opset=18)
    assert info["opset"] == 18
    assert info["inputs"] == {"image": [1, 3, 64, 64]}
    assert info["outputs"] == {"logits": [1, 4, 64, 64]}
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no external data
    proto = onnx.load(str(dst))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded
    raw = dst.read_bytes()
    assert str(REPO).encode() not in raw and str(tmp_path).encode() not in raw
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for seed in range(3):
        x = image(seed)
        (got,) = session.run(["logits"], {"image": x})
        assert psnr(forward(model, x), got) > 60


def test_export_onnx_multiple_outputs_and_wrong_name_count(tmp_path: Path) -> None:
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_classifier(1)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.net(a), self.net(b) * 2

    model = TwoHeads().eval()
    examples = {"a": image(0), "b": image(1)}
    tm.export_onnx(model, examples, ["ya", "yb"], tmp_path / "two.onnx")
    session = ort.InferenceSession(str(tmp_path / "two.onnx"),
                                   providers=["CPUExecutionProvider"])
    ya, yb = session.run(["ya", "yb"], examples)
    (ref,) = tm.run_torch(model, [examples], ["ya", "yb"])
    assert psnr(ref["ya"], ya) > 60 and psnr(ref["yb"], yb) > 60
    with pytest.raises(StageError, match=r"returns 2 output\(s\) but 1 output name"):
        tm.export_onnx(model, examples, ["only"], tmp_path / "bad.onnx")
    with pytest.raises(StageError, match="opset 17 is too old"):
        tm.export_onnx(model, examples, ["ya", "yb"], tmp_path / "old.onnx", opset=17)


_EXPORT_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from buildsys.backends.torch_models import capture, export_onnx
from buildsys.zoo.tiny import tiny_convnet
out = Path(sys.argv[1])
model = tiny_convnet(11)
examples = {"image": np.zeros((1, 3, 64, 64), np.float32)}
export_onnx(model, examples, ["logits"], out / "model.onnx", opset=18)
capture(model, examples, out / sys.argv[2])
"""


def test_onnx_and_pt2_bytes_identical_in_two_fresh_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = []
    for name, pt2 in (("one", "a.pt2"), ("two", "other-name.pt2")):
        (tmp_path / name).mkdir()
        runs.append(subprocess.Popen(
            [sys.executable, "-c", _EXPORT_SCRIPT, str(tmp_path / name), pt2],
            cwd=tmp_path / name, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for run in runs:
        _, err = run.communicate(timeout=240)
        assert run.returncode == 0, err
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "model.onnx").read_bytes() == (two / "model.onnx").read_bytes()
    assert (one / "a.pt2").read_bytes() == (two / "other-name.pt2").read_bytes()
    raw = (one / "a.pt2").read_bytes()
    assert str(REPO).encode() not in raw  # no stack traces with absolute paths
    # Different weights give different bytes (the comparison can fail).
    tm.export_onnx(tiny_convnet(12), {"image": np.zeros((1, 3, 64, 64), np.float32)},
                   ["logits"], tmp_path / "other.onnx")
    assert (tmp_path / "other.onnx").read_bytes() != (one / "model.onnx").read_bytes()


# --- run_torch -------------------------------------------------------------------------------


def test_run_torch_names_outputs() -> None:
    model = tiny_convnet(0)
    samples = [{"image": image(i)} for i in range(2)]
    outputs = tm.run_torch(model, samples, ["logits"])
    assert [list(o) for o in outputs] == [["logits"], ["logits"]]
    for sample, output in zip(samples, outputs, strict=True):
        assert output["logits"].dtype == np.float32
        np.testing.assert_array_equal(output["logits"], forward(model, sample["image"]))
    assert list(tm.run_torch(model, samples[:1])[0]) == ["output_0"]
    with pytest.raises(StageError, match=r"returned 1 output\(s\) but 2"):
        tm.run_torch(model, samples, ["a", "b"])
    with pytest.raises(StageError, match="no input 'x'"):
        tm.run_torch(model, samples, ["logits"], input_names=["x"])


# --- optimize: BN folding and CLE ------------------------------------------------------------


def _convs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d)}


def test_fold_batchnorm_torch_engine() -> None:
    model = tiny_convnet(0)
    before = _convs(model)
    folded, info = tm.fold_batchnorm(model, engine="torch")
    assert info["batchnorms_folded"] == 3
    assert info["pairs"][0] == ["features.0.0", "features.0.1"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched
    after = _convs(folded)
    assert not torch.equal(before["features.0.0"], after["features.0.0"])
    x = image(3)
    np.testing.assert_allclose(forward(folded, x), forward(model, x), rtol=0, atol=1e-4)


aimet = pytest.mark.skipif(importlib.util.find_spec("aimet_torch") is None,
                           reason="aimet_torch not installed")


@aimet
def test_fold_batchnorm_and_cle_with_aimet(tmp_path: Path) -> None:
    model = tiny_convnet(0)
    x = image(5)
    ref = forward(model, x)
    examples = {"image": np.zeros((1, 3, 64, 64), np.float32)}
    folded, info = tm.fold_batchnorm(model, examples)
    assert info["engine"].startswith("aimet_torch")
    assert info["batchnorms_folded"] == 3
    assert ["features.1.0", "features.1.1"] in info["pairs"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched
    np.testing.assert_allclose(forward(folded, x), ref, rtol=0, atol=1e-4)

    equalized, cle = tm.cross_layer_equalize(model, examples)
    assert cle["batchnorms_folded"] == 3
    assert cle["cls_sets"] >= 2
    assert ["features.0.0", "features.1.0"] in cle["cls_pairs"]
    np.testing.assert_allclose(forward(equalized, x), ref, rtol=0, atol=1e-4)
    # CLE rescales the weights beyond the plain fold.
    w_fold = _convs(folded)["features.0.0"]
    w_cle = _convs(equalized)["features.0.0"]
    assert not torch.allclose(w_fold, w_cle)
    # The optimized model exports like any other.
    tm.export_onnx(equalized, examples, ["logits"], tmp_path / "cle.onnx")
    session = ort.InferenceSession(str(tmp_path / "cle.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert psnr(ref, session.run(None, {"image": x})[0]) > 60
