"""DVC stage `validate`: the fp32 and the QDQ model on ONNX Runtime (CPU) over the validation
photos; PSNR of the quantized outputs against the fp32 ones, into metrics.json (fails under
20 dB, like the recipe's `psnr_min_db: 20`)."""

import json
import sys

import numpy as np
import onnxruntime as ort


def outputs(path: str, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"image": image})[0] for image in images])


images = np.load("data/validation.npz")["image"]
reference = outputs("model.onnx", images)
quantized = outputs("model.qdq.onnx", images)
mse = float(np.mean((reference.astype(np.float64) - quantized) ** 2))
peak = float(np.max(np.abs(reference)))
psnr = 10 * np.log10(peak**2 / mse) if mse else float("inf")
with open("metrics.json", "w") as f:
    json.dump({"psnr_db": round(psnr, 2), "samples": len(images)}, f)
if psnr < 20:
    sys.exit(f"PSNR {psnr:.1f} dB < 20 dB")
