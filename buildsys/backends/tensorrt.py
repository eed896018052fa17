"""ONNX -> TensorRT engine for the local NVIDIA GPU, and running/profiling engines on it.

Optional backend: ``pip install 'modelbuild[tensorrt]'`` (NVIDIA's wheels; the runtime
libraries come from pypi.nvidia.com). tensorrt and torch (its CUDA tensors hold the engine's
I/O buffers) are imported inside the functions.

Precision follows the model: a float ONNX builds an FP16 engine (TensorRT may keep a layer in
FP32 where that is faster or FP16 cannot express it); a QDQ ONNX from the recipe's
quantization scheme (onnxruntime or AIMET engine, calibrated on the recipe's data) builds an
INT8 engine by explicit quantization: TensorRT takes the scales from the Q/DQ nodes. (Implicit
INT8 calibration inside TensorRT is deprecated since TensorRT 10.)

An engine runs only on the GPU model and TensorRT release it was built with, and the builder
picks kernels by timing them: engines are not byte-reproducible across builds.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.errors import StageError

INSTALL_HINT = "pip install 'modelbuild[tensorrt]'"
WORKSPACE_BYTES = 1 << 30


def is_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _trt() -> Any:
    if not is_available():
        raise StageError(f"TensorRT stages need the Python package 'tensorrt': {INSTALL_HINT}")
    import tensorrt

    return tensorrt


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def build_engine(onnx_path: Path, dst: Path) -> dict[str, Any]:
    """Parse the ONNX model and write a serialized engine to ``dst``; an info dict."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode since TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StageError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors[:1500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    quantized = _has_qdq(Path(onnx_path))
    config.set_flag(trt.BuilderFlag.FP16)  # float layers of an INT8 engine too
    if quantized and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StageError(f"TensorRT could not build an engine from {Path(onnx_path).name} "
                         "(see the stage log for the builder's messages)")
    Path(dst).write_bytes(bytes(serialized))
    return {"format": "tensorrt-engine", "precision": "int8" if quantized else "fp16",
            "tensorrt_version": trt.__version__, "engine_bytes": Path(dst).stat().st_size}


class _Engine:
    """A deserialized engine with CUDA buffers for its I/O tensors (torch holds them)."""

    def __init__(self, path: Path) -> None:
        import torch

        trt = _trt()
        if not Path(path).is_file():
            raise StageError(f"TensorRT engine {str(path)!r} does not exist")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise StageError(f"TensorRT cannot load {str(path)!r}: built for another GPU or "
                             "TensorRT release?")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.buffers: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(name)))
                                     ).dtype
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)

    def __call__(self, sample: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        import torch

        if len(sample) != len(self.inputs):
            raise StageError(f"sample has {len(sample)} input(s); the engine has "
                             f"{len(self.inputs)} ({self.inputs})")
        values = [sample[n] for n in self.inputs] if set(sample) == set(self.inputs) else list(
            sample.values())
        for name, value in zip(self.inputs, values, strict=True):
            buffer = self.buffers[name]
            if tuple(value.shape) != tuple(buffer.shape):
                raise StageError(f"input {name!r} has shape {list(value.shape)}; the engine "
                                 f"expects {list(buffer.shape)}")
            buffer.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise StageError("TensorRT failed to run the engine")
        self.stream.synchronize()
        seconds = time.perf_counter() - t0
        return {n: self.buffers[n].float().cpu().numpy() for n in self.outputs}, seconds


def run(path: Path, samples: list[dict[str, np.ndarray]]
        ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Each sample through the engine on GPU 0: (outputs per sample, seconds each)."""
    engine = _Engine(path)
    outputs, seconds = [], []
    for sample in samples:
        out, s = engine(sample)
        outputs.append(out)
        seconds.append(s)
    return outputs, seconds


def profile(path: Path, sample: dict[str, np.ndarray], warmup: int = 2, runs: int = 10
            ) -> dict[str, Any]:
    """Latency of the engine on GPU 0 (enqueue to stream done, inputs already on the GPU)."""
    from buildsys.backends.ort_runtime import latency_summary, peak_rss_mb
    from buildsys.cuda_gpus import gpu_class

    if runs < 1 or warmup < 0:
        raise StageError(f"profile needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    t0 = time.perf_counter()
    engine = _Engine(path)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        engine(sample)
    lat = [engine(sample)[1] for _ in range(runs)]
    return {"where": f"NVIDIA GPU ({gpu_class()}, TensorRT {_trt().__version__})",
            "device": "cuda", "load_time_ms": round(load_s * 1e3, 3), "warmup_runs": warmup,
            "latency_ms": latency_summary(lat), "peak_memory_mb": peak_rss_mb(),
            "peak_memory_scope": "host RSS of the worker process (GPU memory not included)",
            "model_bytes": Path(path).stat().st_size}
