"""A tiny segmentation network with one outlier-heavy layer, and labelled photos for it.

`features` (3→8, 3×3, ReLU) feeds `mix` (8→8, 1×1): seven of its channels are small (±1),
the eighth sits on a large constant offset (≈ 500, like the "DC" channels of real networks).
The head (8→4 classes, 1×1) reads only the seven small channels. With one uint8 scale for
the whole `mix` tensor (≈ 2 per step) the small channels fall below a quantization step and
the segmentation collapses; entropy and percentile calibration keep the offset in range (an
eighth of the values sit there), and per-channel weights do not touch activations. 16-bit
activations on `mix` alone repair it. The labels are the fp32 network's own predictions
(fp32 scores mIoU 1.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 16
CLASSES = 4
OFFSET = 500.0


def build_model(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32)
    b2 = np.zeros(8, np.float32)
    b2[7] = OFFSET  # the outlier channel: its usual ±1 around a large offset
    w3 = rng.normal(0, 1.0, (CLASSES, 8, 1, 1)).astype(np.float32)
    w3[:, 7] = 0.0  # the head does not read the outlier channel
    b3 = np.zeros(CLASSES, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["features_conv"], name="features",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["features_conv"], ["features_out"], name="features_relu"),
        helper.make_node("Conv", ["features_out", "w2", "b2"], ["mix_out"], name="mix"),
        helper.make_node("Conv", ["mix_out", "w3", "b3"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "outlier_segnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES, SIZE, SIZE])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_photos(folder: Path, count: int, seed: int = 1) -> list[Path]:
    """Smooth random RGB images (blobs, not noise), as PNG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for index in range(count):
        channels = []
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 2.5, 3)
            channels.append(0.5 + 0.5 * np.sin(2 * np.pi * (fx * xx + fy * yy) + 6 * phase))
        pixels = (np.stack(channels, -1) * 255).round().astype(np.uint8)
        path = folder / f"img{index:02d}.png"
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(path)
    return paths


def write_masks(model: Path, photos: list[Path], folder: Path) -> None:
    """The fp32 model's argmax per pixel, as grayscale PNG masks named like the photos."""
    import onnxruntime as ort
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for photo in photos:
        pixels = np.asarray(Image.open(photo)).astype(np.float32) / 255
        logits = session.run(None, {"image": pixels.transpose(2, 0, 1)[None]})[0]
        mask = np.argmax(logits[0], axis=0).astype(np.uint8)
        Image.fromarray(mask, "L").save(folder / f"{photo.stem}.png")
