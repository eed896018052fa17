"""Ground-truth labels of a dataset's samples, for task metrics (mIoU, top-1/top-5).

A dataset's ``labels:`` has exactly one source:

``masks: "masks/*.png"``
    Segmentation: one single-channel mask image per sample image, matched by file stem
    (``photos/a.jpg`` ↔ ``masks/a.png``); pixel values are class ids. Grayscale (L, I;16, I)
    and palette (P: the palette index is the class) images are read as they are; an RGB
    mask is an error (colours are not class ids). A mask of another size than the model
    input is resized with nearest-neighbour sampling. ``classes`` (the class count) is
    required; ``ignore_index`` (default 255) marks pixels that count for nothing.
``file: labels.txt``
    Classification: one line per sample, either ``<class id>`` (sample order) or
    ``<image name> <class id>`` (matched to image files by stem; a comma works too). Blank
    lines and ``#`` comments are skipped.
``python: "module:callable"``
    ``callable()`` returns one label per sample of the whole dataset, in sample order: an
    integer class id, or an integer mask array ``[H, W]``.

Labels are split like the samples (the first ``calibration`` ones, then ``validation``) and
stored with :func:`buildsys.data.datasets.save_samples` as ``{"label": array}`` per sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StageError
from buildsys.recipe.dataset_files import label_kind

if TYPE_CHECKING:
    import numpy as np

DEFAULT_IGNORE_INDEX = 255
_LINE = re.compile(r"^\s*(?:(?P<name>[^\s,]+)\s*[,\s]\s*)?(?P<id>-?\d+)\s*$")


def load_labels(spec: Mapping[str, Any], label_paths: Sequence[Path],
                image_paths: Sequence[Path], inputs: Mapping[str, Mapping[str, Any]],
                split: str, count: int | None, base: Path | None = None
                ) -> list[np.ndarray]:
    """The labels of the ``split`` samples (what :func:`load_samples` returns, in order).

    ``label_paths``: what :func:`buildsys.recipe.dataset_files.label_files` found (masks in
    sample order, or the one class-id file). ``image_paths``: the dataset's image files, for
    matching names (empty for non-image sources).
    """
    import numpy as np

    from buildsys.data.datasets import _bounds

    labels = spec["labels"]
    kind = label_kind(labels)
    classes = labels.get("classes")
    ignore = labels.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if kind == "masks":
        if not classes:
            raise StageError("dataset labels masks need classes: the class count (for mIoU)")
        start, stop = _bounds(spec, len(label_paths), split, count, "the dataset's masks")
        size = _input_hw(inputs, spec)
        values = [_load_mask(p, size) for p in label_paths[start:stop]]
    elif kind == "file":
        every = _read_class_file(label_paths[0], image_paths)
        start, stop = _bounds(spec, len(every), split, count, f"labels file {label_paths[0].name}")
        values = [np.asarray(v, dtype=np.int64) for v in every[start:stop]]
    else:
        from buildsys.backends.torch_models import import_callable

        entry = str(labels["python"])
        factory = import_callable(entry, base, "dataset labels python")
        try:
            every = [np.asarray(v) for v in factory()]
        except Exception as e:
            raise StageError(f"dataset labels python {entry!r} failed: "
                             f"{type(e).__name__}: {e}") from e
        for index, value in enumerate(every):
            if value.dtype.kind not in "iu" or value.ndim not in (0, 2):
                raise StageError(f"dataset labels python {entry!r}, label {index}: want an "
                                 f"integer class id or an integer [H, W] mask, got "
                                 f"{value.dtype} of shape {list(value.shape)}")
        start, stop = _bounds(spec, len(every), split, count,
                              f"dataset labels python {entry!r}")
        values = [v.astype(np.int64) for v in every[start:stop]]
    if classes:
        for index, value in enumerate(values):
            bad = (value < 0) | (value >= classes)
            bad &= value != ignore
            if np.any(bad):
                raise StageError(f"dataset labels: {split} label {index} holds class id "
                                 f"{int(value[bad].flat[0])}, outside 0..{classes - 1} "
                                 f"(classes: {classes}, ignore_index: {ignore})")
    return values


def _input_hw(inputs: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]
              ) -> tuple[int, int]:
    shape = list(next(iter(inputs.values()))["shape"])
    layout = (spec.get("preprocess") or {}).get("layout", "NCHW")
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def _load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "P", "I", "I;16"):
                raise StageError(f"mask {path.name} is {image.mode}: a mask holds one class id "
                                 "per pixel (grayscale or palette image)")
            height, width = size
            if image.size != (width, height):
                image = image.resize((width, height), resample=Image.Resampling.NEAREST)
            return np.asarray(image).astype(np.int64)
    except (UnidentifiedImageError, OSError) as e:
        raise StageError(f"mask {path} could not be read ({type(e).__name__}: {e})") from e


def _read_class_file(path: Path, image_paths: Sequence[Path]) -> list[int]:
    named: dict[str, int] = {}
    ordered: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _LINE.match(text)
        if not match:
            raise StageError(f"{path.name}:{number}: want `<class id>` or `<image name> "
                             f"<class id>`, got {text!r}")
        if match["name"]:
            named[Path(match["name"]).stem] = int(match["id"])
        else:
            ordered.append(int(match["id"]))
    if named and ordered:
        raise StageError(f"{path.name}: mixes named and unnamed lines; use one form")
    if not named:
        return ordered
    if not image_paths:
        raise StageError(f"{path.name}: named labels match image files; this dataset has none "
                         "(give one class id per line, in sample order)")
    missing = [p.name for p in image_paths if p.stem not in named]
    if missing:
        raise StageError(f"{path.name}: no label for image{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing[:5])}")
    return [named[p.stem] for p in image_paths]
