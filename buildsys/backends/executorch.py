"""Torch -> ExecuTorch program (.pte) for the XNNPACK backend, and running/profiling .pte files
with the ExecuTorch runtime's Python bindings.

Optional backend: ``pip install 'modelbuild[executorch]'``; torch and executorch are imported
inside the functions. ExecuTorch's compiled parts follow a torch release: the extra pins the
pair that co-installs (see pyproject.toml).

Conversion: BatchNorm is folded first with the project's exact float64 fold, the model is
captured with ``torch.export``, optionally quantized with PT2E and ExecuTorch's XNNPACK
quantizer (``w8a8``: per-channel symmetric int8 weights, int8 activations calibrated on the
given samples), then lowered with the XNNPACK partitioner (what XNNPACK cannot take stays on
ExecuTorch's portable kernels) and serialized.

Running: inputs by position (the torch model's argument order), outputs ``{"output_0": ...}``
in the model's output order. XNNPACK picks its microkernels by the CPU's SIMD extensions:
outputs differ per CPU class (numerics.XNNPACK_KERNELS).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.backends.samples import check_sample
from buildsys.errors import StageError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'modelbuild[executorch]'"
WHERE = "host CPU (ExecuTorch, XNNPACK)"
QUANTIZE_MODES = (None, "w8a8")


def is_available() -> bool:
    return importlib.util.find_spec("executorch") is not None


def _require(purpose: str) -> None:
    if not is_available():
        raise StageError(f"{purpose} needs the Python package 'executorch': {INSTALL_HINT}")


def _args(sample: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a).copy()) for a in sample.values())


def convert(model: torch.nn.Module, example_inputs: dict[str, np.ndarray], dst: Path, *,
            quantize: str | None = None,
            calibration: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Write the .pte to ``dst``; return a JSON-able info dict."""
    if quantize not in QUANTIZE_MODES:
        raise StageError(f"executorch quantize={quantize!r} is not one of "
                         f"{[m for m in QUANTIZE_MODES if m]} (or float)")
    if quantize and not calibration:
        raise StageError("executorch w8a8 needs calibration samples")
    for i, s in enumerate(calibration or []):
        check_sample(f"calibration sample {i}", s, example_inputs)
    _require("ExecuTorch export")
    import torch

    from buildsys.backends.torch_models import fold_batchnorm

    folded, fold_info = fold_batchnorm(model, engine="torch")
    args = _args(example_inputs)
    with torch.no_grad():
        try:
            program = _lower(folded.eval(), args, quantize,
                             [_args(s) for s in calibration or []])
        except StageError:
            raise
        except Exception as e:
            raise StageError(f"ExecuTorch could not export the model to {Path(dst).name} "
                             f"({type(e).__name__}: {str(e)[:500]})") from e
    data = program.buffer
    Path(dst).write_bytes(data)
    delegated, total = _delegation(program)
    return {"format": "pte", "backend": "xnnpack", "quantize": quantize or "none",
            "calibration_samples": len(calibration or []) if quantize else 0,
            "batchnorms_folded": fold_info["batchnorms_folded"],
            "xnnpack_delegate_calls": delegated, "ops_outside_xnnpack": total,
            "size_bytes": len(data), "executorch_version": _version("executorch"),
            "torch_version": torch.__version__}


def _lower(model: torch.nn.Module, args: tuple[Any, ...], quantize: str | None,
           calibration: list[tuple[Any, ...]]) -> Any:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if quantize == "w8a8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
        graph = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
        for sample in calibration:
            graph(*sample)
        model = convert_pt2e(graph)
    exported = torch.export.export(model, args)
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch()


def _delegation(program: Any) -> tuple[int, int]:
    """(delegate calls, other operator calls) in the program's execution plan."""
    plan = program.executorch_program.execution_plan[0]
    delegated = sum(1 for c in plan.chains for i in c.instructions
                    if type(i.instr_args).__name__ == "DelegateCall")
    kernels = sum(1 for c in plan.chains for i in c.instructions
                  if type(i.instr_args).__name__ == "KernelCall")
    return delegated, kernels


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------ runtime


def _method(path: Path, threads: int) -> Any:
    """The program's `forward`, loaded by the runtime's compiled bindings.

    Not through `executorch.runtime`: that public wrapper imports the whole exporter
    (executorch.exir, ≈ 10–20 s) for every stage that only runs a program."""
    _require("running a .pte program")
    import torch  # noqa: F401  (the bindings exchange torch tensors)
    from executorch.extension.pybindings import _C

    if not isinstance(threads, int) or threads < 1:
        raise StageError(f"threads={threads!r} must be a positive integer")
    # XNNPACK's threadpool: one per process, sized to the cores unless told.
    if _C._threadpool_get_thread_count() != threads:
        _C._unsafe_reset_threadpool(threads)
    path = Path(path)
    if not path.is_file():
        raise StageError(f"ExecuTorch program {str(path)!r} does not exist")
    try:
        return _C._load_for_executorch(str(path))
    except Exception as e:  # the bindings raise RuntimeError/ValueError with a code
        raise StageError(f"ExecuTorch cannot load {str(path)!r}: {type(e).__name__}: "
                         f"{str(e)[:300]}") from e


def _execute(method: Any, sample: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    args = list(_args(sample))
    t0 = time.perf_counter()
    try:
        out = method.forward(tuple(args))
    except Exception as e:
        raise StageError(f"ExecuTorch could not run the program on inputs "
                         f"{[list(a.shape) for a in args]}: {type(e).__name__}: "
                         f"{str(e)[:300]}") from e
    seconds = time.perf_counter() - t0
    return [np.array(o.detach().numpy(), copy=True) for o in out], seconds


def run(path: Path, samples: list[dict[str, np.ndarray]], threads: int = 1
        ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Each sample through the program: (outputs per sample, seconds each)."""
    method = _method(path, threads)
    outputs, seconds = [], []
    for sample in samples:
        out, s = _execute(method, sample)
        outputs.append({f"output_{i}": a for i, a in enumerate(out)})
        seconds.append(s)
    return outputs, seconds


def profile(path: Path, sample: dict[str, np.ndarray], warmup: int = 2, runs: int = 10,
            threads: int = 1) -> dict[str, Any]:
    """Latency / memory of the .pte on the host CPU (XNNPACK with `threads` threads); a
    JSON-able dict."""
    from buildsys.backends.ort_runtime import host_run_figures

    if not isinstance(warmup, int) or not isinstance(runs, int) or runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    t0 = time.perf_counter()
    method = _method(path, threads)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        _execute(method, sample)
    lat = [_execute(method, sample)[1] for _ in range(runs)]
    return {
        "where": WHERE,
        **host_run_figures(load_s, warmup, lat),
        "runtime": f"executorch {_version('executorch')} (XNNPACK delegate)",
        "threads": threads,
        "model_bytes": Path(path).stat().st_size,
    }
