"""Segmentation overlays: a validation image blended with a predicted class map, and where a
variant's classes differ from the fp32 model's. Images leave as small embedded PNGs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from buildsys.report.gather import SegmentationInputs

# Cityscapes' 19 evaluation classes (train ids 0-18) and their official colours.
CITYSCAPES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)), ("rider", (255, 0, 0)), ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)
MAX_IMAGES = 3
MAX_WIDTH = 384  # px: enough to judge a class map, small enough for many variants
MIN_WIDTH = 192  # px: smaller inputs are enlarged (by a whole factor) to stay readable
BLEND = 0.55  # weight of the class colours over the photo
DISAGREE = (255, 0, 255)  # magenta: absent from both palettes' typical scenes


@dataclass(frozen=True)
class Tile:
    caption: str
    png: str  # data: URI
    disagreement: float | None = None  # fraction of pixels whose class differs from fp32


@dataclass
class ImageRow:
    index: int
    input: Tile
    reference: Tile
    variants: list[tuple[Tile, Tile]]  # (overlay, disagreement) per variant, index order


@dataclass
class ModelOverlays:
    model: str
    classes: int
    palette_name: str
    legend: list[tuple[str, str]]  # (class name, CSS colour)
    rows: list[ImageRow]
    variant_ids: list[str]
    missing: list[str]
    problem: str | None = None  # why there are no overlays (e.g. outputs are not per pixel)


def palette(classes: int) -> tuple[str, list[tuple[str, tuple[int, int, int]]]]:
    """Cityscapes' colours for a 19-class model; else matplotlib's qualitative tab10 / tab20
    (class i always gets colour i), and evenly spaced turbo colours beyond 20 classes."""
    if classes == len(CITYSCAPES):
        return "Cityscapes", list(CITYSCAPES)
    from matplotlib import colormaps

    if classes <= 20:
        name = "tab10" if classes <= 10 else "tab20"
        colours = colormaps[name].colors[:classes]  # type: ignore[attr-defined]
    else:
        name = "turbo"
        cmap = colormaps[name].resampled(classes)
        colours = [cmap(i)[:3] for i in range(classes)]
    return name, [(f"class {i}", (round(255 * r), round(255 * g), round(255 * b)))
                  for i, (r, g, b) in enumerate(colours)]


def model_overlays(data: SegmentationInputs, labels: dict[str, str]) -> ModelOverlays:
    """`labels`: variant id → its caption."""
    import numpy as np

    first = _logits(data.reference[0][data.output_name]) if data.reference else None
    if first is None:
        return ModelOverlays(data.model, 0, "", [], [], [], data.missing,
                             problem=f"output {data.output_name!r} is not a per-pixel class "
                                     "score map (N×C×H×W)")
    classes = first.shape[0]
    name, colours = palette(classes)
    lut = np.array([c for _, c in colours], dtype=np.uint8)
    rows = []
    for i in range(min(MAX_IMAGES, len(data.samples), len(data.reference))):
        photo = _photo(data.samples[i][data.input_name], data.preprocess)
        size = _display_size(photo.shape[1], photo.shape[0])
        photo = _resize(photo, size, nearest=False)
        reference = _class_map(data.reference[i][data.output_name], size)
        variants = []
        for variant_id, outputs in data.variants.items():
            if i >= len(outputs):
                continue
            predicted = _class_map(outputs[i][data.output_name], size)
            differs = predicted != reference
            fraction = float(differs.mean())
            variants.append((
                Tile(labels.get(variant_id, variant_id), _png(_blend(photo, lut[predicted]))),
                Tile(f"differs from fp32 on {100 * fraction:.2f} % of pixels",
                     _png(_disagreement(photo, differs)), fraction)))
        rows.append(ImageRow(i, Tile(f"validation image {i}", _png(photo)),
                             Tile("fp32 reference", _png(_blend(photo, lut[reference]))),
                             variants))
    legend = [(label, "#" + bytes(rgb).hex()) for label, rgb in colours[:40]]
    return ModelOverlays(data.model, classes, name, legend, rows, list(data.variants),
                         data.missing)


def _logits(array: Any) -> np.ndarray | None:
    """C×H×W scores from N×C×H×W (N = 1) or C×H×W; None if the output is not per pixel."""
    import numpy as np

    a = np.asarray(array)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    return a if a.ndim == 3 and a.shape[0] >= 1 and a.shape[1] > 1 and a.shape[2] > 1 else None


def _class_map(array: Any, size: tuple[int, int]) -> np.ndarray:
    import numpy as np

    scores = _logits(array)
    if scores is None:
        raise ValueError(f"not a per-pixel score map: shape {np.asarray(array).shape}")
    classes = np.argmax(scores, axis=0).astype(np.int32)
    return _resize(classes, size, nearest=True)


def _photo(array: Any, preprocess: dict[str, Any]) -> np.ndarray:
    """The input image as H×W×3 uint8: the dataset's scale/mean/std undone when known, else
    stretched to the full range (tensors that never were photos still show their structure)."""
    import numpy as np

    a = np.asarray(array)
    if a.ndim == 4:
        a = a[0]
    if preprocess.get("layout", "NCHW") == "NCHW" and a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    # Every second (third…) pixel of a large input before any arithmetic: the tile is at most
    # MAX_WIDTH wide, and a 2048-pixel float image costs a second to convert in full.
    step = max(1, a.shape[1] // (2 * MAX_WIDTH))
    a = a[::step, ::step].astype(np.float32)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if np.asarray(array).dtype.kind in "iu":
        return np.clip(a, 0, 255).astype(np.uint8)
    std = np.asarray(preprocess.get("std", 1.0), dtype=np.float32)
    mean = np.asarray(preprocess.get("mean", 0.0), dtype=np.float32)
    pixels = (a * std + mean) / float(preprocess.get("scale", 1 / 255))
    if pixels.min() < -1 or pixels.max() > 256:  # not what an image preprocess made
        low, high = float(a.min()), float(a.max())
        pixels = (a - low) / ((high - low) or 1.0) * 255
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _display_size(width: int, height: int) -> tuple[int, int]:
    if width < MIN_WIDTH:
        factor = -(-MIN_WIDTH // width)
        return width * factor, height * factor
    if width <= MAX_WIDTH:
        return width, height
    return MAX_WIDTH, max(1, round(height * MAX_WIDTH / width))


def _resize(array: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    import numpy as np
    from PIL import Image

    if (array.shape[1], array.shape[0]) == size:
        return array
    if nearest:  # class ids: never interpolate between them
        image = Image.fromarray(array.astype(np.int32))
        return np.asarray(image.resize(size, Image.Resampling.NEAREST)).astype(np.int32)
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


def _blend(photo: np.ndarray, colours: np.ndarray) -> np.ndarray:
    import numpy as np

    mixed = (1 - BLEND) * photo.astype(np.float32) + BLEND * colours.astype(np.float32)
    return np.rint(mixed).astype(np.uint8)


def _disagreement(photo: np.ndarray, differs: np.ndarray) -> np.ndarray:
    """The photo faded to grey, disagreeing pixels in magenta."""
    import numpy as np

    grey = photo.astype(np.float32).mean(axis=2, keepdims=True)
    faded = np.repeat(128 + 0.35 * (grey - 128), 3, axis=2)
    faded[differs] = DISAGREE
    return np.rint(faded).astype(np.uint8)


def _png(rgb: np.ndarray) -> str:
    """A data: URI; 256-colour PNG (about a third of the bytes of RGB for these images)."""
    from PIL import Image

    image = Image.fromarray(rgb).quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
