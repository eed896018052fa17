"""DVC stage `quantize`: ONNX Runtime static quantization to QDQ, int8 weights (symmetric) and
uint8 activations, MinMax calibration on data/calibration.npz — the same calls modelbuild's
onnxruntime engine makes for w8a8: `quant_pre_process`, then ORT's QNN-ready QDQ config
(`get_qnn_qdq_config`, so the model also runs on the HTP) and `quantize`."""

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantType,
    quant_pre_process,
    quantize,
)
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config


class Reader(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.samples = [{"image": image} for image in images]
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position == len(self.samples):
            return None
        self.position += 1
        return self.samples[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


images = np.load("data/calibration.npz")["image"]
with tempfile.TemporaryDirectory() as tmp:
    pre = str(Path(tmp) / "preprocessed.onnx")
    quant_pre_process("model.onnx", pre, skip_symbolic_shape=False)
    config = get_qnn_qdq_config(pre, Reader(images), calibrate_method=CalibrationMethod.MinMax,
                                activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=False,
                                weight_symmetric=True)
    quantize(pre, "model.qdq.onnx", config)
