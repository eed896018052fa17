"""qnn (onnxruntime-qnn HTP compiler + x86 simulator) and chipsets, on the real plugin EP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from buildsys import chipsets
from buildsys.backends import qnn
from buildsys.errors import StageError

needs_qnn = pytest.mark.skipif(not qnn.is_available(), reason="onnxruntime-qnn not usable here")


# ----------------------------------------------------------------------------- chipset table


def test_lookup_known_chipsets() -> None:
    c = chipsets.lookup("sm8550")
    assert (c.name, c.soc_model, c.htp_arch, c.vtcm_mb) == ("sm8550", "43", 73, 8)
    assert c.marketing_name == "Snapdragon 8 Gen 2"
    assert chipsets.lookup(" SM8650 ").htp_arch == 75
    assert chipsets.lookup("sm8750").soc_model == "69"
    assert chipsets.lookup("chipset:qualcomm-snapdragon-8gen2") is c
    ids = [chipsets.lookup(n).soc_model for n in chipsets.known()]
    assert len(ids) == len(set(ids))  # one soc_model per row


def test_unknown_chipset_lists_known_and_suggests() -> None:
    with pytest.raises(StageError) as exc:
        chipsets.lookup("sm8555")
    msg = str(exc.value)
    assert "'sm8555'" in msg and "Did you mean 'sm8550'" in msg and "qcs6490" in msg
    with pytest.raises(StageError, match="v68, not the chip's v69"):
        chipsets.lookup("SM8475")


# ----------------------------------------------------------------------------- compile


@needs_qnn
def test_compile_w8a8_for_sm8550(tiny_w8a8, tmp_path) -> None:
    out = qnn.compile_context_binary(tiny_w8a8, tmp_path / "ctx", "sm8550")
    assert out == {
        "model": tmp_path / "ctx" / "tiny_w8a8_ctx.onnx",
        "context": tmp_path / "ctx" / "tiny_w8a8_ctx_qnn.bin",
    }
    assert all(p.is_file() for p in out.values())
    model = onnx.load(str(out["model"]))
    # HTP alone: no CPU Q/DQ around the EPContext node, float in and out.
    assert [n.op_type for n in model.graph.node] == ["EPContext"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["ep_cache_context"] == b"tiny_w8a8_ctx_qnn.bin"  # relative, no directory
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    info = qnn.inspect_context(out["model"])
    assert (info["soc_type"], info["htp_arch"], info["vtcm_mb"]) == ("SM8550", 73, 8)
    assert info["embed_mode"] == 0 and info["qnn_sdk"].startswith("v2.")
    assert str(tmp_path).encode() not in out["context"].read_bytes()


@needs_qnn
def test_compile_records_each_chipsets_arch(tiny_w8a8, tmp_path) -> None:
    for name in ("sm8450", "sm8650"):
        out = qnn.compile_context_binary(tiny_w8a8, tmp_path / name, name)
        info = qnn.inspect_context(out["model"])
        chip = chipsets.lookup(name)
        assert (info["soc_type"], info["htp_arch"]) == (name.upper(), chip.htp_arch)


_COMPILE = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    from buildsys.backends import qnn
    out = qnn.compile_context_binary(Path(sys.argv[1]), Path("out"), "sm8550")
    print(json.dumps({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in out.items()}))
    """
)


@needs_qnn
def test_binary_reproducible_across_fresh_processes(tiny_w8a8, tmp_path) -> None:
    digests = []
    for i, sub in enumerate(("one", "two/deeper")):
        cwd = tmp_path / sub
        cwd.mkdir(parents=True)
        src = cwd / f"copy{i}" / tiny_w8a8.name  # same name, different directory
        src.parent.mkdir()
        src.write_bytes(tiny_w8a8.read_bytes())
        proc = subprocess.run(
            [sys.executable, "-c", _COMPILE, str(src)],
            cwd=cwd, capture_output=True, text=True, check=True,
        )
        digests.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]
    # Repeated compiles inside this (already QNN-using) process are identical too: they are
    # moved to a fresh child process.
    again = [qnn.compile_context_binary(tiny_w8a8, tmp_path / f"again{i}", "sm8550")
             for i in range(2)]
    here = [{k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in o.items()} for o in again]
    assert here[0] == here[1] == digests[0]


@needs_qnn
def test_embedded_context(tiny_w8a8, tmp_path) -> None:
    out = qnn.compile_context_binary(tiny_w8a8, tmp_path, "sm8750", embed=True)
    assert list(out) == ["model"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny_w8a8_ctx.onnx"
    ]
    info = qnn.inspect_context(out["model"])
    assert info["embed_mode"] == 1 and (info["soc_type"], info["htp_arch"]) == ("SM8750", 79)


@needs_qnn
def test_float_model_refused_unless_fp16(tiny_fp32, held_out, cpu_reference, psnr_db,
                                         tmp_path) -> None:
    with pytest.raises(StageError, match="float model"):
        qnn.compile_context_binary(tiny_fp32, tmp_path, "sm8550")
    assert list(tmp_path.iterdir()) == []
    out = qnn.compile_context_binary(tiny_fp32, tmp_path, "sm8550", fp16=True)
    got, _ = qnn.run_on_simulator(out["model"], held_out, "sm8550")
    ref = cpu_reference(tiny_fp32, held_out)
    for r, g in zip(ref, got, strict=True):
        assert psnr_db(r, g["y"]) > 40.0


def test_every_session_disables_cpu_fallback() -> None:
    if not qnn.is_available():
        pytest.skip("onnxruntime-qnn not usable here")
    so = qnn._session_options(chipsets.lookup("sm8550"))
    assert so.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    opts = qnn.provider_options("sm8550")
    assert opts["soc_model"] == "43" and opts["offload_graph_io_quantization"] == "0"


def _det_model(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Det", ["c"], ["y"])],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


@needs_qnn
def test_unsupported_op_is_an_error_not_a_cpu_fallback(tmp_path) -> None:
    src = tmp_path / "det.onnx"
    _det_model(src)
    with pytest.raises(StageError, match=r"fall back to the CPU: Det\)"):
        qnn.compile_context_binary(src, tmp_path / "out", "sm8550", fp16=True)


@needs_qnn
def test_unknown_chipset_or_missing_model(tiny_w8a8, tmp_path) -> None:
    with pytest.raises(StageError, match="Did you mean 'sm8650'"):
        qnn.compile_context_binary(tiny_w8a8, tmp_path, "sm8660")
    with pytest.raises(StageError, match="does not exist"):
        qnn.compile_context_binary(tmp_path / "nope.onnx", tmp_path, "sm8550")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- simulator


@needs_qnn
def test_simulator_matches_cpu_ep(tiny_w8a8, tiny_w8a16, held_out, cpu_reference, psnr_db,
                                  tmp_path) -> None:
    for src, floor in ((tiny_w8a8, 40.0), (tiny_w8a16, 60.0)):
        out = qnn.compile_context_binary(src, tmp_path / src.stem, "sm8550")
        got, lat = qnn.run_on_simulator(out["model"], held_out, "sm8550")
        assert len(got) == len(lat) == len(held_out) and all(t > 0 for t in lat)
        ref = cpu_reference(src, held_out)
        for r, g in zip(ref, got, strict=True):
            assert g["y"].shape == r.shape and g["y"].dtype == np.float32
            assert psnr_db(r, g["y"]) > floor
    # The simulator is deterministic: a second run is bit-identical.
    again, _ = qnn.run_on_simulator(out["model"], held_out[:1], "sm8550")
    np.testing.assert_array_equal(again[0]["y"], got[0]["y"])


@needs_qnn
def test_w4a16_on_the_simulator(tiny_fp32, calibration, held_out, cpu_reference, psnr_db,
                                tmp_path) -> None:
    from buildsys.backends.ort_quantize import quantize_qdq

    src = tmp_path / "w4a16.onnx"
    quantize_qdq(tiny_fp32, src, calibration, weights="int4", activations="int16")
    out = qnn.compile_context_binary(src, tmp_path / "ctx", "sm8650")
    got, _ = qnn.run_on_simulator(out["model"], held_out, "sm8650")
    ref = cpu_reference(src, held_out)
    for r, g in zip(ref, got, strict=True):
        assert psnr_db(r, g["y"]) > 50.0


@needs_qnn
def test_simulator_refuses_other_chipset_and_bad_inputs(tiny_w8a8, held_out, tmp_path) -> None:
    out = qnn.compile_context_binary(tiny_w8a8, tmp_path, "sm8550")
    with pytest.raises(StageError, match="compiled for SM8550"):
        qnn.run_on_simulator(out["model"], held_out, "sm8650")
    with pytest.raises(StageError, match=r"shape \[1, 3, 16, 16\]"):
        qnn.run_on_simulator(out["model"], [{"x": np.zeros((1, 3, 16, 16), "f4")}], "sm8550")
    out["context"].unlink()
    with pytest.raises(StageError, match="not next to it"):
        qnn.run_on_simulator(out["model"], held_out, "sm8550")


@needs_qnn
def test_profile_on_simulator(tiny_w8a8, held_out, tmp_path) -> None:
    out = qnn.compile_context_binary(tiny_w8a8, tmp_path, "sm8550")
    prof = qnn.profile_on_simulator(out["model"], held_out[0], "sm8550")
    json.dumps(prof)
    assert prof["where"] == "QNN HTP simulator (x86, sm8550) — not device latency"
    assert prof["latency_ms"]["runs"] == 1 and prof["warmup_runs"] == 0
    assert prof["latency_ms"]["min"] > 0
    assert (prof["soc_model"], prof["htp_arch"], prof["vtcm_mb"]) == ("43", 73, 8)
    assert prof["peak_memory_mb"] > 10 and "process" in prof["peak_memory_scope"]
    assert prof["per_op"] and abs(sum(r["share"] for r in prof["per_op"]) - 1.0) < 1e-3
    assert any("QuantizeLinear" in r["node"] for r in prof["per_op"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in out.values()
    )  # no profile files left behind
    quick = qnn.profile_on_simulator(out["model"], held_out[0], "sm8550", per_op=False, runs=2)
    assert quick["per_op"] == [] and quick["latency_ms"]["runs"] == 2


def test_describe_and_availability() -> None:
    d = qnn.describe()
    if qnn.is_available():
        assert {"onnxruntime", "onnxruntime_qnn", "qnn_sdk"} <= set(d)
    else:
        assert d
