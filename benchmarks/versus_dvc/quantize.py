"""DVC stage `quantize`: ONNX Runtime static quantization, QDQ, int8 weights (symmetric) and
uint8 activations, MinMax calibration on data/calibration.npz (the settings modelbuild's
onnxruntime engine uses for w8a8)."""

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)


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
    quantize_static(pre, "model.qdq.onnx", Reader(images), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=False, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
