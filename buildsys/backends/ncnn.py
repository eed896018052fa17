"""Torch -> NCNN (.param/.bin) with pnnx, and running/profiling NCNN models with the ncnn module.

Optional backend: pnnx and ncnn come with ``pip install 'modelbuild[ncnn]'``; torch, pnnx and
ncnn are imported inside the functions.

Conversion: BatchNorm is folded first with the project's exact float64 fold (the same bytes on
every CPU), the model is traced with TorchScript in this process (pinned kernels, see
numerics.py), and the pnnx executable turns the trace into an NCNN graph, in a scratch
directory and from relative paths (the files record no path). ``fp16=True`` stores the
weights as float16 in the .bin (pnnx's default, what NCNN on phones loads); the graph is
unchanged. pnnx numbers the blobs ``in0, in1, ...`` and ``out0, out1, ...`` in the torch
model's argument and output order. NCNN's int8 path needs ncnn2table/ncnn2int8, which neither
wheel ships: int8 is not offered.

Running: NCNN tensors have no batch axis, so inputs must have batch 1; it is dropped on the
way in and put back on the way out. Every run uses a fresh extractor (an extractor keeps the
blobs it computed). NCNN's x86 layers are compiled per SIMD extension and picked by the CPU
(AVX-512, AVX2+FMA, ...): outputs differ per CPU class (numerics.NCNN_KERNELS).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.errors import StageError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'modelbuild[ncnn]'"
WHERE = "host CPU (ncnn)"
PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
PNNX_TIMEOUT_S = 1800.0


def is_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("pnnx", "ncnn"))


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise StageError(f"{purpose} needs the Python package {module!r}: {INSTALL_HINT}")


def _shape_arg(example: dict[str, np.ndarray]) -> str:
    """pnnx's inputshape argument: [1,3,64,64]f32,[1,8]i64 ..."""
    codes = {"float32": "f32", "float16": "f16", "float64": "f64", "int32": "i32",
             "int64": "i64", "uint8": "u8", "int8": "i8", "bool": "b"}
    parts = []
    for name, a in example.items():
        code = codes.get(a.dtype.name)
        if code is None:
            raise StageError(f"input {name!r}: pnnx cannot take {a.dtype.name} inputs")
        parts.append("[" + ",".join(str(d) for d in a.shape) + "]" + code)
    return ",".join(parts)


def convert(model: torch.nn.Module, example_inputs: dict[str, np.ndarray], out_dir: Path,
            work_dir: Path, *, fp16: bool) -> dict[str, Any]:
    """Write ``out_dir/model.ncnn.param`` and ``out_dir/model.ncnn.bin``; an info dict."""
    _require("pnnx", "NCNN conversion")
    import pnnx
    import torch

    from buildsys.backends.torch_models import fold_batchnorm

    example = {k: np.ascontiguousarray(v) for k, v in example_inputs.items()}
    for name, a in example.items():
        if a.ndim == 0 or a.shape[0] != 1:
            raise StageError(f"input {name!r} has shape {list(a.shape)}: NCNN runs batch 1 "
                             "only (the first axis must be 1)")
    folded, fold_info = fold_batchnorm(model, engine="torch")
    args = tuple(torch.from_numpy(a.copy()) for a in example.values())
    scratch = Path(work_dir) / "pnnx"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with torch.no_grad(), warnings.catch_warnings():
        # pnnx reads TorchScript; torch marks tracing deprecated (pnnx also reads ONNX, the
        # way out when tracing goes).
        warnings.simplefilter("ignore", FutureWarning)
        try:
            traced = torch.jit.trace(folded.eval(), args, check_trace=False)
        except Exception as e:
            raise StageError(f"TorchScript could not trace the model for pnnx "
                             f"({type(e).__name__}: {str(e)[:500]})") from e
        traced.save(str(scratch / "model.pt"))
    command = [pnnx.EXEC_PATH, "model.pt", f"inputshape={_shape_arg(example)}", "device=cpu",
               "optlevel=2", f"fp16={int(fp16)}", f"ncnnparam={PARAM}", f"ncnnbin={BIN}"]
    try:
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                              timeout=PNNX_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise StageError(f"pnnx did not finish within {PNNX_TIMEOUT_S:.0f} s") from e
    param, weights = scratch / PARAM, scratch / BIN
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = (done.stderr or done.stdout or "")[-1500:]
        raise StageError(f"pnnx could not convert the model (exit {done.returncode}): {tail}")
    unsupported = _unsupported_layers(param.read_text())
    if unsupported:
        raise StageError("pnnx left operators NCNN cannot run (no NCNN layer for them): "
                         + ", ".join(unsupported))
    out_dir = Path(out_dir)
    shutil.copyfile(param, out_dir / PARAM)
    shutil.copyfile(weights, out_dir / BIN)
    layers, blobs = _header(param.read_text())
    return {"format": "ncnn", "weights_storage": "fp16" if fp16 else "fp32",
            "layers": layers, "blobs": blobs, "batchnorms_folded": fold_info["batchnorms_folded"],
            "param_bytes": (out_dir / PARAM).stat().st_size,
            "bin_bytes": (out_dir / BIN).stat().st_size,
            "pnnx_version": _version("pnnx"), "torch_version": torch.__version__}


def _header(param_text: str) -> tuple[int, int]:
    lines = param_text.splitlines()
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise StageError("not an NCNN .param file (no 7767517 magic on its first line)")
    layers, blobs = (int(x) for x in lines[1].split())
    return layers, blobs


def _unsupported_layers(param_text: str) -> list[str]:
    """pnnx writes operators without an NCNN layer under their torch names (e.g. `aten::…`,
    `F.…`, `torch.…`); NCNN would refuse the file at load time."""
    kinds = {line.split()[0] for line in param_text.splitlines()[2:] if line.strip()}
    return sorted(k for k in kinds if re.match(r"(aten::|prim::|F\.|torch\.|Tensor\.|nn\.)", k))


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------ runtime


def _net(param: Path, weights: Path, threads: int) -> Any:
    _require("ncnn", "running an NCNN model")
    import ncnn

    for path in (param, weights):
        if not Path(path).is_file():
            raise StageError(f"NCNN model file {str(path)!r} does not exist")
    if not isinstance(threads, int) or threads < 1:
        raise StageError(f"threads={threads!r} must be a positive integer")
    net = ncnn.Net()
    # fp32 arithmetic everywhere (an fp16 .bin is widened at load): what the figures measure
    # is the model, not the host's half-precision support.
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if net.load_param(str(param)) != 0:
        raise StageError(f"ncnn cannot load {str(param)!r} (not an NCNN .param, or a layer "
                         "this ncnn does not know)")
    if net.load_model(str(weights)) != 0:
        raise StageError(f"ncnn cannot load the weights {str(weights)!r} (truncated, or not "
                         f"the .bin of {Path(param).name})")
    return net


def _blob_names(net: Any) -> tuple[list[str], list[str]]:
    return list(net.input_names()), list(net.output_names())


def _extract(net: Any, sample: dict[str, np.ndarray], ins: list[str],
             outs: list[str]) -> tuple[dict[str, np.ndarray], float]:
    import ncnn

    if len(sample) != len(ins):
        raise StageError(f"sample has {len(sample)} input(s) {list(sample)}; the NCNN model "
                         f"has {len(ins)} ({ins}, in the torch model's argument order)")
    ex = net.create_extractor()
    mats = []  # an ncnn.Mat borrows the array's memory: keep both alive until extracted
    for blob, (name, value) in zip(ins, sample.items(), strict=True):
        a = np.asarray(value)
        if a.ndim == 0 or a.shape[0] != 1:
            raise StageError(f"input {name!r} has shape {list(a.shape)}: NCNN runs batch 1 only")
        a = np.ascontiguousarray(a[0], dtype=np.float32)
        mat = ncnn.Mat(a)
        mats.append((a, mat))
        ex.input(blob, mat)
    results: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for blob in outs:
        code, mat = ex.extract(blob)
        if code != 0:
            raise StageError(f"ncnn could not compute output {blob!r} (error {code})")
        results[blob] = np.array(mat)[None]
    return results, time.perf_counter() - t0


def run(param: Path, weights: Path, samples: list[dict[str, np.ndarray]], threads: int = 1
        ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Each sample through the NCNN model: (outputs per sample as ``{"out0": ...}`` in the
    torch model's output order, each with its batch axis back), seconds per run."""
    net = _net(param, weights, threads)
    ins, outs = _blob_names(net)
    outputs, seconds = [], []
    for sample in samples:
        out, s = _extract(net, sample, ins, outs)
        outputs.append(out)
        seconds.append(s)
    return outputs, seconds


def profile(param: Path, weights: Path, sample: dict[str, np.ndarray], warmup: int = 2,
            runs: int = 10, threads: int = 1) -> dict[str, Any]:
    """Latency / memory of the NCNN model on the host CPU; a JSON-able dict. A run is one
    extraction with a fresh extractor (inputs set, every output computed)."""
    from buildsys.backends.ort_runtime import host_run_figures

    if not isinstance(warmup, int) or not isinstance(runs, int) or runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    t0 = time.perf_counter()
    net = _net(param, weights, threads)
    load_s = time.perf_counter() - t0
    ins, outs = _blob_names(net)
    for _ in range(warmup):
        _extract(net, sample, ins, outs)
    lat = [_extract(net, sample, ins, outs)[1] for _ in range(runs)]
    return {
        "where": WHERE,
        **host_run_figures(load_s, warmup, lat),
        "runtime": f"ncnn {_version('ncnn')} (CPU, fp32 arithmetic)",
        "threads": threads,
        "model_bytes": Path(param).stat().st_size + Path(weights).stat().st_size,
    }

