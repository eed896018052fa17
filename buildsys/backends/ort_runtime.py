"""ONNX Runtime on the host CPU: offline graph optimisation, `.ort` conversion, runs, profiling.

Accuracy figures must not depend on the build machine's CPU: at ORT_ENABLE_ALL a uint8 QDQ model
is rewritten to QLinearConv, whose integer kernels saturate on AVX2 CPUs without VNNI. So `run`
defaults to ORT_ENABLE_BASIC (Q/DQ kept, arithmetic in float); callers record the level.

Determinism (onnxruntime 1.32, checked in fresh processes and different directories):
- `optimize_model` writes identical bytes for the same input and level.
- ORT's own `.ort` writer does NOT: the kernel-type-string table at the head of the flatbuffer is
  laid out in hash-map order and the hash seed changes per process (absl, address-seeded).
  `convert_to_ort_format` therefore rebuilds that table in sorted order and re-emits the root
  (the model sub-buffer is copied verbatim) and checks the result loads; the canonical bytes
  are then identical across processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import struct
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.errors import StageError

LEVELS = ("disable", "basic", "extended", "layout", "all")


def _level(level: str) -> Any:
    import onnxruntime as ort

    table = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in table:
        raise StageError(
            f"onnxruntime optimisation level {level!r} is unknown; use one of {list(LEVELS)}"
        )
    return table[level]


def _check_model_file(path: Path) -> None:
    if not Path(path).is_file():
        raise StageError(f"model file {path} does not exist")


def _session_options(level: str, threads: int) -> Any:
    import onnxruntime as ort

    if threads < 1:
        raise StageError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.graph_optimization_level = _level(level)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def _create(path: Path, so: Any, disabled_optimizers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path),
            sess_options=so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled_optimizers,
        )
    except Exception as e:
        raise StageError(f"onnxruntime could not load {Path(path).name}: {e}") from e


def check_feed(session: Any, sample: dict[str, np.ndarray], model_name: str) -> dict[str, Any]:
    """Validate one sample against the session's inputs; returns the feed dict."""
    inputs = {i.name: i for i in session.get_inputs()}
    if set(sample) != set(inputs):
        raise StageError(
            f"{model_name}: the sample has inputs {sorted(sample)}, the model expects "
            f"{sorted(inputs)}"
        )
    feed: dict[str, Any] = {}
    for name, arg in inputs.items():
        arr = np.ascontiguousarray(sample[name])
        want = _np_dtype(arg.type)
        if want is not None and arr.dtype != want:
            raise StageError(
                f"{model_name}: input {name!r} has dtype {arr.dtype}, the model expects {want}"
            )
        shape = arg.shape
        ok = len(shape) == arr.ndim and all(
            not isinstance(d, int) or d == s for d, s in zip(shape, arr.shape, strict=True)
        )
        if not ok:
            raise StageError(
                f"{model_name}: input {name!r} has shape {list(arr.shape)}, the model expects "
                f"{list(shape)}"
            )
        feed[name] = arr
    return feed


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _np_dtype(ort_type: str) -> np.dtype | None:
    t = _ORT_TYPES.get(ort_type)
    return None if t is None else np.dtype(t)


def run_session(
    session: Any, samples: list[dict[str, np.ndarray]], model_name: str
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Run validated samples through an open ORT session: (outputs, seconds per run)."""
    names = [o.name for o in session.get_outputs()]
    feeds = [check_feed(session, s, model_name) for s in samples]
    outputs: list[dict[str, np.ndarray]] = []
    latencies: list[float] = []
    for feed in feeds:
        t0 = time.perf_counter()
        try:
            result = session.run(names, feed)
        except Exception as e:
            raise StageError(f"{model_name}: inference failed: {e}") from e
        latencies.append(time.perf_counter() - t0)
        outputs.append(dict(zip(names, (np.asarray(r) for r in result), strict=True)))
    return outputs, latencies


def optimize_model(src: Path, dst: Path, level: str = "extended") -> None:
    """Write ORT's offline-optimised graph of `src` to `dst` (an ONNX file for ORT's CPU EP).

    At "layout"/"all" the NCHWc transformer is disabled (it emits x86-only ops), as
    onnxruntime.tools.convert_onnx_models_to_ort does; other "all" rewrites still follow this
    machine's CPU, so ship "extended" unless the target is known.
    """
    src, dst = Path(src), Path(dst)
    _check_model_file(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    so = _session_options(level, 1)
    so.optimized_model_filepath = str(dst)
    disabled = ["NchwcTransformer"] if level in ("layout", "all") else None
    _create(src, so, disabled)
    if not dst.is_file():
        raise StageError(f"onnxruntime did not write the optimised model {dst}")


def convert_to_ort_format(src: Path, dst: Path, *, level: str = "all",
                          runtime_optimizations: bool = False) -> None:
    """Convert `src` to the ORT format (`.ort`, for ORT Mobile) at `dst`, canonical bytes.

    Same settings as `onnxruntime.tools.convert_onnx_models_to_ort` for a phone
    (`--target_platform arm`): optimisation `level` (default "all") without the NCHWc
    transformer, `session.qdqisint8allowed=1`, and its optimisation style: "Fixed" bakes
    every optimisation in; with `runtime_optimizations` ("Runtime", for QDQ models) only the
    basic ones are applied and the QDQ fusions are saved for the device's ORT to apply when it
    loads the model, for its own CPU. Baked-in QLinear* kernels would make the host's figures
    depend on the build machine's CPU (no VNNI: tens of dB lost). That tool's file layout
    (config files next to the model, names from the source) does not fit a build stage, so the
    same session options are applied here directly.
    """
    src, dst = Path(src), Path(dst)
    _check_model_file(src)
    if dst.suffix != ".ort":
        raise StageError(f"ORT format output {dst} must end in .ort (ORT picks the format by it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    so = _session_options(level, 1)
    raw = dst.with_name(dst.stem + ".raw.ort")
    so.optimized_model_filepath = str(raw)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    if runtime_optimizations:
        so.add_session_config_entry("optimization.minimal_build_optimizations", "save")
    disabled = ["NchwcTransformer"] if level in ("layout", "all") else None
    try:
        _create(src, so, disabled)
        data = raw.read_bytes()
    finally:
        raw.unlink(missing_ok=True)
    try:
        canon = canonicalize_ort_bytes(data)
    except Exception as e:  # layout assumption broken by a new ORT version
        warnings.warn(
            f"could not canonicalise the .ort file ({e}); writing ORT's bytes as they are, "
            "which differ between processes",
            stacklevel=2,
        )
        canon = data
    tmp = dst.with_name(dst.stem + ".tmp.ort")
    tmp.write_bytes(canon)
    if canon is not data:
        try:
            _create(tmp, _session_options("disable", 1))
        except StageError:
            tmp.write_bytes(data)
            warnings.warn(
                "the canonicalised .ort file did not load; writing ORT's bytes as they are",
                stacklevel=2,
            )
    os.replace(tmp, dst)


# Slots of the ORT flatbuffers schema (onnxruntime/core/flatbuffers/schema/ort.fbs) used below.
# Read with flatbuffers primitives: ORT's generated bindings live under onnxruntime.tools, whose
# package __init__ imports torch (~3 s).
_IS_ORT_VERSION, _IS_MODEL, _IS_RESOLVER, _IS_FIELDS = 0, 1, 3, 4


def _fb_field(t: Any, slot: int) -> int:
    return int(t.Offset(4 + 2 * slot))


def _fb_table(t: Any, slot: int) -> Any:
    from flatbuffers.table import Table

    o = _fb_field(t, slot)
    return None if o == 0 else Table(t.Bytes, t.Indirect(o + t.Pos))


def _fb_string(t: Any, slot: int) -> bytes | None:
    o = _fb_field(t, slot)
    return None if o == 0 else bytes(t.String(o + t.Pos))


def _fb_tables(t: Any, slot: int) -> list[Any]:
    from flatbuffers.table import Table

    o = _fb_field(t, slot)
    if o == 0:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _fb_scalar(t: Any, slot: int, flags: Any) -> int:
    o = _fb_field(t, slot)
    return 0 if o == 0 else int(t.Get(flags, o + t.Pos))


def canonicalize_ort_bytes(data: bytes) -> bytes:
    """Rebuild an ORT-format flatbuffer with its kernel-type-string resolver in sorted order.

    ORT writes the model first (it ends up at the tail of the buffer, laid out
    deterministically), then the resolver and the root table. The model sub-buffer is copied
    verbatim to the tail of a new buffer (offsets from the end are kept, so alignment and the
    model's internal relative offsets stay valid); resolver and root are re-emitted in order.
    """
    import flatbuffers
    from flatbuffers import number_types as nt
    from flatbuffers.table import Table

    if len(data) < 8 or data[4:8] != b"ORTM":
        raise ValueError("not an ORT-format file (no ORTM identifier)")
    root = Table(bytearray(data), struct.unpack_from("<I", data, 0)[0])
    model = _fb_table(root, _IS_MODEL)
    resolver = _fb_table(root, _IS_RESOLVER)
    if model is None or resolver is None:
        raise ValueError("ORT file without model or kernel type string resolver")
    model_pos = model.Pos
    vtable_pos = model_pos - struct.unpack_from("<i", data, model_pos)[0]
    start = min(model_pos, vtable_pos)
    if not (root.Pos < start and resolver.Pos < start):
        raise ValueError("unexpected layout: root or resolver after the model")

    entries = []
    for e in _fb_tables(resolver, 0):
        kts = []
        for k in _fb_tables(e, 1):
            args = [
                (_fb_scalar(a, 0, nt.Int8Flags), _fb_scalar(a, 1, nt.Uint32Flags))
                for a in _fb_tables(k, 1)
            ]
            kts.append((_fb_string(k, 0) or b"", args))
        entries.append((_fb_string(e, 0) or b"", sorted(kts)))
    entries.sort()
    version = _fb_string(root, _IS_ORT_VERSION)

    b = flatbuffers.Builder(len(data) + 4096)
    block = data[start:]
    b.head = len(b.Bytes) - len(block)
    b.Bytes[b.head :] = block
    b.minalign = 8
    model_ref = len(data) - model_pos  # builder offsets count from the end of the buffer

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return int(b.EndVector())

    def table(fields: list[tuple[str, int, int]]) -> int:
        b.StartObject(len(fields) if fields[0][0] != "root" else _IS_FIELDS)
        for kind, slot, value in fields:
            if kind == "int8":
                b.PrependInt8Slot(slot, value, 0)
            elif kind == "uint32":
                b.PrependUint32Slot(slot, value, 0)
            else:
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
        return int(b.EndObject())

    entry_offsets = []
    for op_id, kts in entries:
        kt_offsets = []
        for kt, args in kts:
            arg_offsets = [
                table([("int8", 0, arg_type), ("uint32", 1, index)]) for arg_type, index in args
            ]
            args_vec = vector(arg_offsets)
            kt_str = b.CreateString(kt)
            kt_offsets.append(table([("ref", 0, kt_str), ("ref", 1, args_vec)]))
        kts_vec = vector(kt_offsets)
        op_str = b.CreateString(op_id)
        entry_offsets.append(table([("ref", 0, op_str), ("ref", 1, kts_vec)]))
    resolver_ref = table([("ref", 0, vector(entry_offsets))])
    root_fields = [("root", _IS_MODEL, model_ref), ("root", _IS_RESOLVER, resolver_ref)]
    if version is not None:
        root_fields.insert(0, ("root", _IS_ORT_VERSION, b.CreateString(version)))
    b.Finish(table(root_fields), file_identifier=b"ORTM")
    return bytes(b.Output())


def run(
    path: Path,
    samples: list[dict[str, np.ndarray]],
    level: str = "basic",
    threads: int = 1,
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Run each sample through `path` on the CPU EP: (outputs per sample, latency seconds each).

    Validation runs use level "basic" (see the module docstring).
    """
    _check_model_file(path)
    session = _create(Path(path), _session_options(level, threads))
    return run_session(session, samples, Path(path).name)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    return {
        "median": round(float(np.median(ms)), 3),
        "min": round(min(ms), 3),
        "max": round(max(ms), 3),
        "runs": len(ms),
    }


def host_run_figures(load_s: float, warmup: int, latencies: list[float]) -> dict[str, Any]:
    """What every host-CPU profile reports, whichever runtime ran the model: the machine, load
    time, warm-up, latency summary and the worker's peak memory."""
    return {
        "device": "host",
        "cpu": host_cpu(),
        "load_time_ms": round(load_s * 1e3, 3),
        "warmup_runs": warmup,
        "latency_ms": latency_summary(latencies),
        "peak_memory_mb": peak_rss_mb(),
        "peak_memory_scope": "peak RSS of the whole worker process (ru_maxrss), not the model "
        "alone",
    }


def _per_op(profile_path: Path, runs: int, top: int) -> list[dict[str, Any]]:
    """Aggregate node kernel times by op type over the last `runs` model_run events."""
    events = json.loads(profile_path.read_text())
    run_windows = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[-runs:]
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = e.get("ts", 0)
        if not any(a <= ts <= b for a, b in run_windows):
            continue
        op = e.get("args", {}).get("op_name", "?")
        total[op] += float(e.get("dur", 0))
        count[op] += 1
    grand = sum(total.values()) or 1.0
    n = max(len(run_windows), 1)
    rows = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [
        {
            "op_type": op,
            "ms_per_run": round(us / n / 1e3, 4),
            "nodes": count[op] // n,
            "share": round(us / grand, 4),
        }
        for op, us in rows
    ]


def profile(
    path: Path,
    sample: dict[str, np.ndarray],
    warmup: int = 2,
    runs: int = 10,
    level: str = "basic",
    threads: int = 1,
    top_ops: int = 15,
) -> dict[str, Any]:
    """Latency / memory / per-op profile of `path` on the host CPU EP; a JSON-able dict.

    ORT's profiler is on for the whole session (it adds about a microsecond per node); per-op
    times come from the measured runs only, aggregated by op type.
    """
    import onnxruntime as ort

    _check_model_file(path)
    if runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="modelbuild-ortprof-") as tmp:
        so = _session_options(level, threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        t0 = time.perf_counter()
        session = _create(path, so)
        load_s = time.perf_counter() - t0
        run_session(session, [sample] * warmup, path.name)
        _, lat = run_session(session, [sample] * runs, path.name)
        with contextlib.redirect_stdout(io.StringIO()):
            prof_file = Path(session.end_profiling())
        per_op = _per_op(prof_file, runs, top_ops)
        prof_file.unlink(missing_ok=True)
    return {
        "where": f"host CPU (onnxruntime {ort.__version__}, {threads} "
        f"thread{'s' if threads != 1 else ''})",
        **host_run_figures(load_s, warmup, lat),
        "optimization_level": level,
        "per_op": per_op,
        "per_op_source": "onnxruntime profiler, kernel time by op type over the measured runs",
    }


def host_cpu() -> str:
    """CPU model name of this machine (for labelling host measurements)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe() -> dict[str, str]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "cpu": host_cpu()}
