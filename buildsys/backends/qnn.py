"""onnxruntime-qnn: offline HTP context binaries for a Snapdragon SoC, and the x86 HTP simulator.

onnxruntime-qnn is a plugin EP: it is registered with
`register_execution_provider_library`, its device taken from `get_ep_devices()` and added with
`SessionOptions.add_provider_for_devices`. Every session here sets
`session.disable_cpu_ep_fallback=1`, so an unsupported op, a bad option value or an unknown
`soc_model` fails loudly instead of silently running on the CPU.

Context binaries (`compile_context_binary`):
- `soc_model` comes from `chipsets.lookup`; the SoC name and HTP arch the binary records are read
  back and checked against the table (`inspect_context`).
- `offload_graph_io_quantization="0"`: the graph's input quantisation / output dequantisation
  is compiled into the HTP graph, so `<stem>_ctx.onnx` holds only the EPContext node and the
  artifact runs on the HTP alone (float in, float out). With ORT's default ("1") it would keep
  QuantizeLinear/DequantizeLinear nodes for the CPU around the EPContext node.
- Float (non-QDQ) models are refused unless `fp16=True` (`enable_htp_fp16_precision=1`).
- Reproducible bytes: the model is handed to `ort.ModelCompiler` as bytes, so no path (which
  would seed the partition name) enters the output, and the compile runs as the first QNN
  graph of its process: QNN numbers tensors with process-wide counters, and a second compile in
  one process changes ~60 bytes. If this process has already used QNN, the compile is run in a
  fresh child interpreter instead, so the function is reproducible however it is called.

Simulator (`run_on_simulator`, `profile_on_simulator`): a context binary loads and runs on this
x86 machine through libQnnHtp's HTP simulation. Times are simulator wall times (15-90 s per
FFNet inference, ~10-30 ms for a tiny net): never phone latency.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.chipsets import Chipset, lookup
from buildsys.errors import StageError

EP_NAME = "QNNExecutionProvider"
_MIN_ORT = (1, 24, 2)

# Process-wide state: whether this module registered the plugin EP, and whether any QNN graph
# has been built / loaded in this process (then a compile must go to a fresh process).
_STATE: dict[str, bool] = {"registered": False, "used": False}

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_FALLBACK_MSG = "fallback to CPU EP has been explicitly disabled"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        m = re.match(r"\d+", part)
        out.append(int(m.group()) if m else 0)
    return tuple(out)


def _load() -> tuple[Any, Any, list[Any]]:
    """Import ORT + onnxruntime_qnn, register the plugin EP once, return (ort, oq, devices)."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn as oq
    except ImportError as e:
        raise StageError(
            f"the QNN backend needs onnxruntime and onnxruntime-qnn installed ({e}); "
            "pip install onnxruntime-qnn"
        ) from e
    if _version_tuple(ort.__version__) < _MIN_ORT:
        raise StageError(
            f"onnxruntime-qnn needs onnxruntime >= 1.24.2, found {ort.__version__}; upgrade it"
        )
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices and not _STATE["registered"]:
        try:
            ort.register_execution_provider_library(EP_NAME, oq.get_library_path())
        except Exception as e:
            raise StageError(f"could not register the QNN execution provider library: {e}") from e
        _STATE["registered"] = True
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    elif devices and not _STATE["registered"]:
        # Someone else in this process registered it (and may have built QNN graphs).
        _STATE["used"] = True
    if not devices:
        raise StageError("the QNN execution provider is registered but offers no device")
    return ort, oq, devices


def provider_options(chipset: str, *, fp16: bool = False) -> dict[str, str]:
    """The QNN EP options a compile for `chipset` uses (without the backend library path)."""
    chip = lookup(chipset)
    return {
        "soc_model": chip.soc_model,
        "offload_graph_io_quantization": "0",
        "enable_htp_fp16_precision": "1" if fp16 else "0",
    }


def _session_options(
    chip: Chipset, extra: dict[str, str] | None = None, *, fallback: bool = False
) -> Any:
    ort, oq, devices = _load()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # the graph runs inside QNN; no ORT thread pool needed
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    opts = {"backend_path": oq.get_qnn_htp_path(), "soc_model": chip.soc_model}
    opts.update(extra or {})
    so.add_provider_for_devices(devices, opts)
    return so


def _model_kind(src: Path) -> tuple[bool, bool]:
    """(has Q/DQ nodes, uses external data) of an ONNX file."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:
        raise StageError(f"{src} is not a readable ONNX model ({e})") from e
    qdq = any(n.op_type in _QDQ_OPS for n in model.graph.node)
    external = any(uses_external_data(t) for t in model.graph.initializer)
    return qdq, external


def _outputs(src: Path, out_dir: Path, embed: bool) -> dict[str, Path]:
    stem = src.stem
    out = {"model": out_dir / f"{stem}_ctx.onnx"}
    if not embed:
        out["context"] = out_dir / f"{stem}_ctx_qnn.bin"
    return out


def compile_context_binary(
    src: Path,
    out_dir: Path,
    chipset: str,
    *,
    fp16: bool = False,
    embed: bool = False,
) -> dict[str, Path]:
    """Compile the ONNX model `src` to a QNN HTP context binary for `chipset`.

    Writes `<stem>_ctx.onnx` (a single EPContext node) and, unless `embed`, the binary
    `<stem>_ctx_qnn.bin` next to it (embed mode 0). Returns {"model": ..., "context": ...}
    ({"model": ...} only when embedded).
    """
    src, out_dir = Path(src), Path(out_dir)
    chip = lookup(chipset)
    if not src.is_file():
        raise StageError(f"QNN compile: model file {src} does not exist")
    qdq, external = _model_kind(src)
    if external:
        raise StageError(
            f"QNN compile: {src.name} keeps its weights in external data files; save it as a "
            "single .onnx file (< 2 GB) to compile it"
        )
    if not qdq and not fp16:
        raise StageError(
            f"QNN compile: {src.name} is a float model (no QuantizeLinear/DequantizeLinear "
            "nodes). Quantize it first (a QDQ model) or compile it with fp16=True to run it "
            "in fp16 on the HTP"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _outputs(src, out_dir, embed)
    for p in (out_dir / f"{src.stem}_ctx.onnx", out_dir / f"{src.stem}_ctx_qnn.bin"):
        p.unlink(missing_ok=True)  # ORT refuses to overwrite a context file

    args = {
        "src": str(src.resolve()),
        "model_out": str(outputs["model"].resolve()),
        "chipset": chip.name,
        "fp16": fp16,
        "embed": embed,
    }
    _load()
    if _STATE["used"]:
        _compile_in_child(args)
    else:
        _compile_here(**args)

    for p in outputs.values():
        if not p.is_file():
            raise StageError(f"QNN compile of {src.name} did not produce {p.name}")
    _check_compiled(outputs["model"], chip)
    return outputs


def _compile_here(src: str, model_out: str, chipset: str, fp16: bool, embed: bool) -> None:
    ort, _, _ = _load()
    chip = lookup(chipset)
    opts = provider_options(chipset, fp16=fp16)
    so = _session_options(chip, opts)
    data = Path(src).read_bytes()
    _STATE["used"] = True
    try:
        compiler = ort.ModelCompiler(so, data, embed_compiled_data_into_model=embed)
        compiler.compile_to_file(model_out)
    except Exception as e:
        msg = str(e)
        if _FALLBACK_MSG in msg:
            leftovers = _unsupported_ops(data, chip, opts)
            raise StageError(
                f"QNN compile of {Path(src).name} for {chip.name}: the HTP backend cannot take "
                f"the whole graph (would fall back to the CPU: "
                f"{', '.join(leftovers) or 'unknown ops'}). Replace or remove those ops"
            ) from e
        raise StageError(f"QNN compile of {Path(src).name} for {chip.name} failed: {msg}") from e


def _unsupported_ops(data: bytes, chip: Chipset, opts: dict[str, str]) -> list[str]:
    """Op types the QNN EP leaves to the CPU (diagnostic compile with fallback allowed)."""
    import onnx

    ort, _, _ = _load()
    with tempfile.TemporaryDirectory(prefix="modelbuild-qnn-diag-") as tmp:
        out = Path(tmp) / "diag_ctx.onnx"
        try:
            so = _session_options(chip, opts, fallback=True)
            ort.ModelCompiler(so, data).compile_to_file(str(out))
            model = onnx.load(str(out), load_external_data=False)
        except Exception:
            return []
    return sorted({n.op_type for n in model.graph.node if n.op_type != "EPContext"})


def _compile_in_child(args: dict[str, Any]) -> None:
    code = (
        "import json, sys\n"
        "from buildsys.errors import StageError\n"
        "from buildsys.backends.qnn import _compile_here\n"
        "try:\n"
        "    _compile_here(**json.loads(sys.argv[1]))\n"
        "except StageError as e:\n"
        "    sys.stderr.write('\\nSTAGEERROR:' + json.dumps(str(e)) + '\\n')\n"
        "    sys.exit(3)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode == 0:
        return
    for line in proc.stderr.splitlines():
        if line.startswith("STAGEERROR:"):
            raise StageError(json.loads(line[len("STAGEERROR:") :]))
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise StageError(
        f"QNN compile worker for {Path(args['src']).name} failed (exit {proc.returncode}):\n{tail}"
    )


def _check_compiled(model_path: Path, chip: Chipset) -> None:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    others = sorted({n.op_type for n in model.graph.node if n.op_type != "EPContext"})
    if others:
        raise StageError(
            f"QNN compile: {model_path.name} still has nodes outside the HTP graph ({others})"
        )
    info = inspect_context(model_path)
    want = chip.name.upper()
    if info["soc_type"] is not None and info["soc_type"].upper() != want:
        raise StageError(
            f"QNN compile: {model_path.name} records SoC {info['soc_type']}, expected {want} "
            f"(soc_model {chip.soc_model}); the chipset table does not match this QNN SDK"
        )
    if info["htp_arch"] is not None and info["htp_arch"] != chip.htp_arch:
        raise StageError(
            f"QNN compile: {model_path.name} records HTP arch v{info['htp_arch']}, expected "
            f"v{chip.htp_arch} for {chip.name}; the chipset table does not match this QNN SDK"
        )


_SOC_RE = re.compile(rb"soc_type=([A-Za-z0-9_]+);arch=(\d+);")
_VTCM_RE = re.compile(rb";vtcm_size=(\d+);")


def inspect_context(ctx_model: Path) -> dict[str, Any]:
    """What a compiled context records: SoC name, HTP arch, VTCM size, QNN SDK version.

    Reads the EPContext node of `ctx_model` and its context (the `.bin` next to it, or the
    embedded bytes). SoC / arch / VTCM come from the HTP backend's config record inside the
    binary (an undocumented text record; None where it is not found).
    """
    import onnx

    ctx_model = Path(ctx_model)
    if not ctx_model.is_file():
        raise StageError(f"context model {ctx_model} does not exist")
    model = onnx.load(str(ctx_model), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "EPContext"]
    if not nodes:
        raise StageError(f"{ctx_model.name} has no EPContext node: it is not a compiled model")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    blob = attrs.get("ep_cache_context", b"")
    embed = int(attrs.get("embed_mode", 1))
    binary_name = None
    if embed == 0:
        binary_name = blob.decode()
        bin_path = ctx_model.parent / binary_name
        if not bin_path.is_file():
            raise StageError(
                f"{ctx_model.name} refers to context binary {binary_name}, which is not next to it"
            )
        blob = bin_path.read_bytes()
    soc = _SOC_RE.search(blob)
    vtcm = _VTCM_RE.search(blob)
    sdk = attrs.get("ep_sdk_version")
    return {
        "soc_type": soc.group(1).decode() if soc else None,
        "htp_arch": int(soc.group(2)) if soc else None,
        "vtcm_mb": int(vtcm.group(1)) // 2**20 if vtcm else None,
        "qnn_sdk": sdk.decode() if isinstance(sdk, bytes) else sdk,
        "embed_mode": embed,
        "context_file": binary_name,
        "context_bytes": len(blob),
    }


def _simulator_session(ctx_model: Path, chip: Chipset, extra: dict[str, str] | None) -> Any:
    ort, _, _ = _load()
    ctx_model = Path(ctx_model)
    info = inspect_context(ctx_model)
    if info["soc_type"] is not None and info["soc_type"].upper() != chip.name.upper():
        raise StageError(
            f"{ctx_model.name} was compiled for {info['soc_type']} (HTP v{info['htp_arch']}), "
            f"not for {chip.name}; compile it for {chip.name} or simulate "
            f"{info['soc_type'].lower()}"
        )
    so = _session_options(chip, extra)
    _STATE["used"] = True
    try:
        return ort.InferenceSession(str(ctx_model), sess_options=so)
    except Exception as e:
        raise StageError(
            f"the QNN HTP simulator could not load {ctx_model.name} for {chip.name}: {e}"
        ) from e


def run_on_simulator(
    ctx_model: Path, samples: list[dict[str, np.ndarray]], chipset: str
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Run each sample through a compiled context model on the x86 HTP simulator.

    Returns (outputs per sample, simulator wall time in seconds per sample).
    """
    from buildsys.backends.ort_runtime import run_session

    chip = lookup(chipset)
    session = _simulator_session(Path(ctx_model), chip, None)
    return run_session(session, samples, Path(ctx_model).name)


def _parse_qnn_csv(path: Path, runs: int, top: int) -> tuple[list[dict[str, Any]], float | None]:
    """Per-node simulator cycles (mean over the last `runs` executions) + execute time (us)."""
    if not path.is_file():
        return [], None
    blocks: list[dict[str, float]] = []
    execute_us: list[float] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ident = row.get("Event Identifier", "")
            unit = row.get("Unit of Measurement", "")
            try:
                value = float(row.get("Time", "nan"))
            except ValueError:
                continue
            if ident == "Accelerator (execute) time (cycles)":
                blocks.append({})
            elif row.get("Message") == "NODE" and unit == "CYCLES" and blocks:
                name = re.sub(r"(:OpId_\d+)? \(cycles\)$", "", ident)
                blocks[-1][name] = blocks[-1].get(name, 0.0) + value
            elif ident == "Accelerator (execute) time" and unit == "US":
                execute_us.append(value)
    measured = blocks[-runs:] if blocks else []
    total: dict[str, float] = defaultdict(float)
    for b in measured:
        for k, v in b.items():
            total[k] += v
    n = max(len(measured), 1)
    grand = sum(total.values()) or 1.0
    rows = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    per_op = [
        {"node": k, "cycles_per_run": round(v / n), "share": round(v / grand, 4)} for k, v in rows
    ]
    exec_us = float(np.median(execute_us[-runs:])) if execute_us else None
    return per_op, exec_us


def profile_on_simulator(
    ctx_model: Path,
    sample: dict[str, np.ndarray],
    chipset: str,
    warmup: int = 0,
    runs: int = 1,
    per_op: bool = True,
    top_ops: int = 15,
) -> dict[str, Any]:
    """Profile a compiled context model on the x86 HTP simulator; a JSON-able dict.

    The simulator is slow (seconds per GMAC) and deterministic with no warm-up effect on real
    models, hence one run and no warm-up by default. Latency is simulator wall time, not device
    latency. With `per_op` the QNN backend's detailed profile gives cycles per QNN node as the
    simulator counts them: a rough cost ranking, not device cycles.
    """
    import onnxruntime as ort

    from buildsys.backends.ort_runtime import latency_summary, peak_rss_mb, run_session

    chip = lookup(chipset)
    if runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    ctx_model = Path(ctx_model)
    with tempfile.TemporaryDirectory(prefix="modelbuild-qnnprof-") as tmp:
        csv_path = Path(tmp) / "qnn_profile.csv"
        extra = (
            {"profiling_level": "detailed", "profiling_file_path": str(csv_path)}
            if per_op
            else None
        )
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            session = _simulator_session(ctx_model, chip, extra)
        load_s = time.perf_counter() - t0
        run_session(session, [sample] * warmup, ctx_model.name)
        _, lat = run_session(session, [sample] * runs, ctx_model.name)
        del session  # flushes the QNN profile
        ops, exec_us = _parse_qnn_csv(csv_path, runs, top_ops) if per_op else ([], None)
    info = inspect_context(ctx_model)
    out: dict[str, Any] = {
        "where": f"QNN HTP simulator (x86, {chip.name}) — not device latency",
        "device": "qnn-htp-simulator",
        "chipset": chip.name,
        "soc_model": chip.soc_model,
        "htp_arch": info["htp_arch"],
        "vtcm_mb": info["vtcm_mb"],
        "qnn_sdk": info["qnn_sdk"],
        "onnxruntime": ort.__version__,
        "load_time_ms": round(load_s * 1e3, 3),
        "warmup_runs": warmup,
        "latency_ms": latency_summary(lat),
        "latency_source": "simulator wall time on the host",
        "peak_memory_mb": peak_rss_mb(),
        "peak_memory_scope": "peak RSS of the whole worker process (ru_maxrss), host side",
        "per_op": ops,
    }
    if per_op:
        out["per_op_source"] = (
            "QNN detailed profile: cycles per QNN node as counted by the simulator (a rough "
            "cost ranking, not device cycles)"
        )
        out["simulator_execute_ms"] = None if exec_us is None else round(exec_us / 1e3, 3)
    return out


def is_available() -> bool:
    """True if onnxruntime-qnn imports, registers and offers its HTP device on this machine."""
    try:
        _, oq, devices = _load()
        return bool(devices) and Path(oq.get_qnn_htp_path()).is_file()
    except Exception:
        return False


def describe() -> dict[str, str]:
    """Tool versions that determine what this backend produces."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn as oq
    except ImportError as e:
        return {"error": f"onnxruntime-qnn not importable: {e}"}
    info = {"onnxruntime": ort.__version__, "onnxruntime_qnn": oq.__version__}
    qnn_sdk = getattr(getattr(oq, "build_and_package_info", None), "qnn_version", None)
    if qnn_sdk:
        info["qnn_sdk"] = str(qnn_sdk)
    return info
