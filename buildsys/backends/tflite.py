"""Torch -> .tflite with litert-torch, and running/profiling .tflite files with LiteRT.

Optional backend: litert-torch and ai-edge-litert come with ``pip install 'modelbuild[tflite]'``.
torch, litert_torch and ai_edge_litert are imported inside the functions.

Layout: litert-torch keeps the torch model's I/O layout (NCHW) by inserting transposes, so
samples are given exactly as to the torch model. Inputs are matched by position: the i-th
entry of a sample dict feeds the model's i-th forward() argument (tflite names them
``args_0``, ``args_1``, ...); outputs come back as dicts ``{"output_0": ..., ...}`` in the
model's output order.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.backends.samples import check_sample
from buildsys.errors import StageError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'modelbuild[tflite]'"
QUANTIZE_MODES = (None, "int8")
WHERE = "host CPU (LiteRT interpreter)"


def is_available() -> bool:
    """True if both the converter (litert_torch) and the runtime (ai_edge_litert) import."""
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise StageError(f"{purpose} needs the Python package {module!r}: {INSTALL_HINT}")


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """litert-torch prints a progress tree to stdout unless this env var says no."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _as_args(sample: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a).copy()) for a in sample.values())



def convert(
    model: torch.nn.Module,
    example_inputs: dict[str, np.ndarray],
    dst: Path,
    *,
    quantize: str | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Convert ``model`` to a .tflite file at ``dst``; return a JSON-able info dict.

    ``quantize=None`` keeps float32. ``quantize="int8"`` is full-integer post-training
    quantization through litert-torch's PT2E quantizer (per-channel symmetric int8 weights,
    histogram-calibrated int8 activations, int8 model inputs/outputs) and needs
    ``calibration``: a list of sample dicts like ``example_inputs``.
    """
    if quantize not in QUANTIZE_MODES:
        raise StageError(f"tflite quantize={quantize!r} is not one of {list(QUANTIZE_MODES)}")
    if not example_inputs:
        raise StageError("example_inputs is empty: the model needs at least one input")
    example = {k: np.asarray(v) for k, v in example_inputs.items()}
    if quantize == "int8":
        if not calibration:
            raise StageError(
                "tflite int8 needs a calibration set: pass calibration=[{input: array}, ...] "
                "(a few representative samples shaped like the example inputs)"
            )
        for i, s in enumerate(calibration):
            check_sample(f"calibration sample {i}", s, example)
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise StageError(f"output directory {str(dst.parent)!r} does not exist")
    _require("litert_torch", "tflite conversion")
    _require("ai_edge_litert", "tflite conversion")

    import litert_torch
    import torch

    args = _as_args(example)
    work = copy.deepcopy(model).eval()
    # Calibration observers and converter passes are deterministic; any randomness they
    # might draw comes from a fixed seed without touching the caller's RNG state.
    with _quiet_progress(), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        try:
            if quantize is None:
                edge = litert_torch.convert(work, args)
            else:
                edge = _convert_int8(work, args, [_as_args(s) for s in calibration or []])
        except StageError:
            raise
        except Exception as e:
            raise StageError(
                f"litert-torch could not convert the model to {dst.name} "
                f"({type(e).__name__}: {str(e)[:500]})"
            ) from e
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            edge.export(str(tmp))
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    from ai_edge_litert import __version__ as litert_rt_version

    io = _io(_interpreter(dst, threads=1))
    return {
        "format": "tflite",
        "quantize": quantize or "none",
        "calibration_samples": len(calibration or []) if quantize else 0,
        "io_layout": "as the torch model (NCHW kept by litert-torch)",
        "inputs": [_describe(d) for d in io[0]],
        "outputs": [_describe(d) for d in io[1]],
        "size_bytes": dst.stat().st_size,
        "litert_torch_version": litert_torch.__version__,
        "ai_edge_litert_version": litert_rt_version,
        "torch_version": torch.__version__,
    }


def _convert_int8(
    model: torch.nn.Module, args: tuple[Any, ...], calib: list[tuple[Any, ...]]
) -> Any:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e
    except ImportError as e:  # pragma: no cover - depends on the installed torchao
        raise StageError(
            f"tflite int8 needs torchao's PT2E quantization ({e}): {INSTALL_HINT}"
        ) from e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    graph = torch.export.export(model, args).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    for sample in calib:
        graph(*sample)
    graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    graph = move_exported_model_to_eval(graph)
    return litert_torch.convert(
        graph, args, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
    )


# ------------------------------------------------------------------------------ runtime


def _interpreter(path: Path, threads: int, reference_kernels: bool = False) -> Any:
    _require("ai_edge_litert", "running a .tflite model")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = Path(path)
    if not path.is_file():
        raise StageError(f"tflite model {str(path)!r} does not exist")
    if not isinstance(threads, int) or threads < 1:
        raise StageError(f"threads={threads!r} must be a positive integer")
    try:
        # The reference kernels (plain C++, no XNNPACK) give the same bytes on every CPU.
        resolver = (OpResolverType.BUILTIN_REF if reference_kernels
                    else OpResolverType.AUTO)
        it = Interpreter(model_path=str(path), num_threads=threads,
                         experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise StageError(f"LiteRT cannot load {str(path)!r}: {e}") from e
    return it


def _order_key(name: str) -> tuple[int, int | str]:
    m = re.fullmatch(r"(?:args|output)_(\d+)", name)
    return (0, int(m.group(1))) if m else (1, name)


def _io(it: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output tensor details in the torch model's argument / output order."""
    sigs = it.get_signature_list()
    if len(sigs) == 1:
        runner = it.get_signature_runner(next(iter(sigs)))
        ins, outs = runner.get_input_details(), runner.get_output_details()
        in_idx = {d["index"] for d in it.get_input_details()}
        out_idx = {d["index"] for d in it.get_output_details()}
        # Signature tensors are those of the main subgraph: set_tensor/invoke work directly.
        if {d["index"] for d in ins.values()} == in_idx and {
            d["index"] for d in outs.values()
        } == out_idx:
            return (
                [{**ins[k], "signature_name": k} for k in sorted(ins, key=_order_key)],
                [{**outs[k], "signature_name": k} for k in sorted(outs, key=_order_key)],
            )
    if sigs:
        raise StageError(
            f"tflite model with signatures {sorted(sigs)} is not a single-signature model "
            "as litert-torch writes; cannot map inputs by position"
        )
    return list(it.get_input_details()), list(it.get_output_details())


def _describe(d: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = d["quantization"]
    out: dict[str, Any] = {
        "name": _signature_name(d),
        "tensor": d["name"],
        "shape": [int(x) for x in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
    }
    if scale:
        out["scale"] = float(scale)
        out["zero_point"] = int(zero_point)
    return out


def _to_input(name: str, value: np.ndarray, d: dict[str, Any]) -> np.ndarray:
    a = np.asarray(value)
    shape = tuple(int(x) for x in d["shape"])
    if a.shape != shape:
        raise StageError(
            f"input {name!r} has shape {list(a.shape)}; the tflite model expects {list(shape)}"
        )
    dtype = np.dtype(d["dtype"])
    scale, zero_point = d["quantization"]
    if a.dtype == dtype:
        return np.ascontiguousarray(a)
    if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(a.dtype, np.floating):
        info = np.iinfo(dtype)
        q = np.round(a.astype(np.float32) / np.float32(scale)) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)
    if np.issubdtype(dtype, np.floating) and np.issubdtype(a.dtype, np.floating):
        return a.astype(dtype)
    raise StageError(f"input {name!r} is {a.dtype}; the tflite model expects {dtype.name}")


def _from_output(value: np.ndarray, d: dict[str, Any]) -> np.ndarray:
    scale, zero_point = d["quantization"]
    if scale and np.issubdtype(value.dtype, np.integer):
        return (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return value.copy()


def _feed(it: Any, ins: list[dict[str, Any]], sample: dict[str, np.ndarray]) -> None:
    """Set the inputs: by signature name if the keys are those names, else by position."""
    names = [_signature_name(d) for d in ins]
    if len(sample) != len(ins):
        raise StageError(
            f"sample has {len(sample)} input(s) {list(sample)}; the tflite model has "
            f"{len(ins)} ({names}, in the torch model's argument order)"
        )
    values = [sample[n] for n in names] if set(sample) == set(names) else list(sample.values())
    for name, value, d in zip(names, values, ins, strict=True):
        it.set_tensor(d["index"], _to_input(name, value, d))


def _signature_name(d: dict[str, Any]) -> str:
    return str(d.get("signature_name", d["name"]))


def run(
    path: Path, samples: list[dict[str, np.ndarray]], threads: int = 1,
    reference_kernels: bool = False,
) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Run each sample through the .tflite model: (outputs per sample, latency seconds each).

    A sample's arrays feed the model's inputs in order (or by signature name ``args_<i>``).
    ``outputs[i]`` maps the signature output names (``output_0``, ...) to arrays, in the
    torch model's output order. Int8 models get float inputs quantized and outputs
    dequantized to float32 with the tensors' scale/zero point. A latency is the wall time of
    ``invoke()`` alone. ``reference_kernels``: LiteRT's reference kernels instead of XNNPACK
    (slower; the same outputs on every CPU).
    """
    it = _interpreter(path, threads, reference_kernels)
    ins, outs = _io(it)
    out_names = [_signature_name(d) for d in outs]
    results: list[dict[str, np.ndarray]] = []
    latencies: list[float] = []
    for sample in samples:
        _feed(it, ins, sample)
        t0 = time.perf_counter()
        it.invoke()
        latencies.append(time.perf_counter() - t0)
        results.append(
            {n: _from_output(it.get_tensor(d["index"]), d) for n, d in zip(out_names, outs,
                                                                          strict=True)}
        )
    return results, latencies


def profile(
    path: Path, sample: dict[str, np.ndarray], warmup: int = 2, runs: int = 10, threads: int = 1
) -> dict[str, Any]:
    """Latency / memory of ``path`` in the LiteRT interpreter on the host CPU; a JSON-able dict.

    ``warmup`` untimed ``invoke()`` calls, then ``runs`` timed ones (``invoke()`` alone, inputs
    already set). The interpreter applies its default XNNPACK CPU delegate. This is the build
    machine, not a phone.
    """
    from buildsys.backends.ort_runtime import host_run_figures

    if not isinstance(warmup, int) or not isinstance(runs, int) or runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    path = Path(path)
    t0 = time.perf_counter()
    it = _interpreter(path, threads)
    load_s = time.perf_counter() - t0
    ins, _ = _io(it)
    _feed(it, ins, sample)
    for _ in range(warmup):
        it.invoke()
    lat: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        lat.append(time.perf_counter() - t0)
    from ai_edge_litert import __version__ as litert_rt_version

    return {
        "where": WHERE,
        **host_run_figures(load_s, warmup, lat),
        "runtime": f"ai-edge-litert {litert_rt_version} (default XNNPACK CPU delegate)",
        "threads": threads,
        "model_bytes": path.stat().st_size,
    }
