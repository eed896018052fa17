"""ort_runtime on real onnxruntime (CPU EP) with the tiny conv net from conftest."""

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

from buildsys.backends import ort_runtime
from buildsys.errors import StageError


def test_run_outputs_and_latencies(tiny_fp32, held_out, cpu_reference) -> None:
    outs, lat = ort_runtime.run(tiny_fp32, held_out)
    assert len(outs) == len(lat) == len(held_out)
    assert all(t > 0 for t in lat)
    ref = cpu_reference(tiny_fp32, held_out)
    for o, r in zip(outs, ref, strict=True):
        assert set(o) == {"y"} and o["y"].dtype == np.float32
        np.testing.assert_array_equal(o["y"], r)
    # The unoptimised graph (BN not folded) agrees to float rounding.
    raw, _ = ort_runtime.run(tiny_fp32, held_out[:1], level="disable", threads=2)
    np.testing.assert_allclose(raw[0]["y"], outs[0]["y"], rtol=1e-4, atol=1e-5)


def test_run_rejects_bad_inputs(tiny_fp32, held_out, tmp_path) -> None:
    x = held_out[0]["x"]
    with pytest.raises(StageError, match=r"expects \['x'\]"):
        ort_runtime.run(tiny_fp32, [{"image": x}])
    with pytest.raises(StageError, match=r"shape \[1, 3, 32, 31\]"):
        ort_runtime.run(tiny_fp32, [{"x": x[..., :31]}])
    with pytest.raises(StageError, match="float64"):
        ort_runtime.run(tiny_fp32, [{"x": x.astype(np.float64)}])
    with pytest.raises(StageError, match="level 'fast'"):
        ort_runtime.run(tiny_fp32, held_out, level="fast")
    with pytest.raises(StageError, match="does not exist"):
        ort_runtime.run(tmp_path / "nope.onnx", held_out)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(StageError, match=r"could not load junk\.onnx"):
        ort_runtime.run(tmp_path / "junk.onnx", held_out)


def test_optimize_model_folds_and_matches(tiny_fp32, held_out, tmp_path) -> None:
    dst = tmp_path / "opt.onnx"
    ort_runtime.optimize_model(tiny_fp32, dst, level="extended")
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    a, _ = ort_runtime.run(tiny_fp32, held_out)
    b, _ = ort_runtime.run(dst, held_out)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["y"], y["y"], rtol=1e-5, atol=1e-5)


def test_ort_format_loads_and_matches(tiny_fp32, tiny_w8a8, held_out, tmp_path) -> None:
    for src, runtime_style in ((tiny_fp32, False), (tiny_w8a8, True)):
        dst = tmp_path / f"{src.stem}.ort"
        ort_runtime.convert_to_ort_format(src, dst, runtime_optimizations=runtime_style)
        data = dst.read_bytes()
        assert data[4:8] == b"ORTM"
        assert ort_runtime.canonicalize_ort_bytes(data) == data  # already canonical
        a, _ = ort_runtime.run(src, held_out)
        b, _ = ort_runtime.run(dst, held_out)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x["y"], y["y"], rtol=1e-4, atol=2e-4)
    # The QDQ model's .ort keeps Q/DQ and float arithmetic (its fusions are saved for the
    # device's ORT): on the host it computes exactly what the .onnx does, on any CPU, never
    # with QLinearConv's integer kernels (which lose tens of dB on CPUs without VNNI).
    qdq_ort = tmp_path / "tiny_w8a8.ort"
    ops = {row["op_type"] for row in ort_runtime.profile(
        qdq_ort, held_out[0], warmup=0, runs=1, level="all", threads=1)["per_op"]}
    assert "QLinearConv" not in ops and {"Conv", "DequantizeLinear"} <= ops
    a, _ = ort_runtime.run(tiny_w8a8, held_out)
    b, _ = ort_runtime.run(qdq_ort, held_out)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["y"], y["y"])
    # The fixed style bakes QLinearConv in: the CPU-dependent artifact this avoids.
    fixed = tmp_path / "fixed.ort"
    ort_runtime.convert_to_ort_format(tiny_w8a8, fixed)
    ops = {row["op_type"] for row in ort_runtime.profile(
        fixed, held_out[0], warmup=0, runs=1, level="basic", threads=1)["per_op"]}
    assert "QLinearConv" in ops
    fixed.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ort", "tiny_w8a8.ort"]
    with pytest.raises(StageError, match=r"must end in \.ort"):
        ort_runtime.convert_to_ort_format(tiny_fp32, tmp_path / "x.onnx")


_WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    from buildsys.backends import ort_runtime
    src, qdq = Path(sys.argv[1]), Path(sys.argv[2])
    out = {}
    for name, fn, s, dst in [
        ("opt", ort_runtime.optimize_model, qdq, Path("o.onnx")),
        ("ort_fp32", ort_runtime.convert_to_ort_format, src, Path("f.ort")),
        ("ort_qdq", ort_runtime.convert_to_ort_format, qdq, Path("q.ort")),
    ]:
        fn(s, dst)
        out[name] = hashlib.sha256(dst.read_bytes()).hexdigest()
    print(json.dumps(out))
    """
)


def test_outputs_identical_across_fresh_processes(tiny_fp32, tiny_w8a8, tmp_path) -> None:
    digests = []
    for sub in ("first", "second/deeper"):
        cwd = tmp_path / sub
        cwd.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, str(tiny_fp32), str(tiny_w8a8)],
            cwd=cwd, capture_output=True, text=True, check=True,
        )
        digests.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]
    # The canonical .ort is what this process writes too.
    ort_runtime.convert_to_ort_format(tiny_w8a8, tmp_path / "here.ort")
    here = hashlib.sha256((tmp_path / "here.ort").read_bytes()).hexdigest()
    assert here == digests[0]["ort_qdq"]


def test_profile_fields(tiny_fp32, held_out, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    prof = ort_runtime.profile(tiny_fp32, held_out[0], warmup=1, runs=5, level="basic",
                               threads=1)
    json.dumps(prof)  # JSON-able
    assert prof["where"].startswith("host CPU (onnxruntime ")
    assert "1 thread)" in prof["where"]
    lat = prof["latency_ms"]
    assert lat["runs"] == 5 and 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert prof["load_time_ms"] > 0 and prof["warmup_runs"] == 1
    assert prof["peak_memory_mb"] > 10 and "process" in prof["peak_memory_scope"]
    ops = {row["op_type"]: row for row in prof["per_op"]}
    # BN folded into Conv at "basic": only Conv and Relu kernels run.
    assert set(ops) == {"Conv", "Relu"}
    assert ops["Conv"]["nodes"] == 3 and ops["Relu"]["nodes"] == 2
    assert abs(sum(r["share"] for r in prof["per_op"]) - 1.0) < 1e-3
    assert prof["per_op"][0]["ms_per_run"] >= prof["per_op"][-1]["ms_per_run"]
    assert list(tmp_path.iterdir()) == []  # the profiler's JSON went to a temp dir and is gone
    with pytest.raises(StageError, match="runs >= 1"):
        ort_runtime.profile(tiny_fp32, held_out[0], warmup=0, runs=0, level="basic", threads=1)


def test_describe() -> None:
    d = ort_runtime.describe()
    assert d["onnxruntime"].count(".") >= 2 and d["cpu"]


def test_canonicalize_rejects_other_bytes(tiny_fp32) -> None:
    with pytest.raises(ValueError, match="ORTM"):
        ort_runtime.canonicalize_ort_bytes(Path(tiny_fp32).read_bytes())
