"""Calibration and validation samples from a recipe's ``datasets`` entry.

A sample is ``{input name: array of the input's full shape and dtype}``. A dataset has exactly
one source:

``images: "photos/**/*.jpg"``
    A glob relative to the project (``**`` recurses). Files are sorted by their path relative
    to the project (POSIX form), loaded with Pillow and preprocessed (below). Single-input
    models with a batch size of 1 and 3 channels only.
``skimage: [astronaut, coffee, chelsea, rocket, motorcycle_left, camera]``
    The sample photos bundled inside the scikit-image wheel (its ``skimage/data`` folder; no
    download, scikit-image is not even imported), by file stem or file name, in the order
    given. Preprocessed like ``images``. See :func:`builtin_images`.
``npz: arrays.npz``
    One array per model input, named like the input, samples on axis 0: shape
    ``(S, *input_shape)``, or ``(S, *input_shape[1:])`` when the input's batch size is 1.
``npy: arrays.npy``
    The same for a single-input model.
``python: "module:callable"``
    ``callable()`` (no arguments) returns an iterable of samples: dicts ``{input: array}``, or
    bare arrays for a single-input model; shapes as for ``npz`` without the sample axis.
``random: {seed: 0, low: 0, high: 1}``
    Seeded uniform tensors for latency-only builds (a ``UserWarning`` says accuracy figures
    are meaningless). Sample ``i`` of a split comes from ``numpy.random.default_rng([seed,
    split, i])`` (split 0 calibration, 1 validation): the splits never share a sample. Integer
    inputs get integers in ``[low, high]``. Split sizes: the dataset's ``calibration`` /
    ``validation`` counts, else the ``count`` asked for.

Splits (every source but ``random``): with ``S`` samples, the first ``calibration`` samples
are the calibration split and the next ``validation`` ones the validation split -- disjoint.
Give at least one of the two counts: the missing one takes the remaining samples. Fewer than
``calibration + validation`` samples is an error. ``count`` (e.g. a quantization scheme's
``samples``) takes the first ``count`` samples of the split and must not exceed it.

Image preprocessing (``preprocess:``), in this order:

- ``convert: rgb``: convert grayscale, palette, RGBA, CMYK, ... images to RGB first (alpha is
  dropped, not composited). Without it any image that is not RGB is an error naming the file
  and its mode -- a silent conversion could hide a wrong dataset.
- ``resize: [H, W]``: bilinear (Pillow's ``Image.BILINEAR``, deterministic), default the
  model input's H×W; it must match the input's shape.
- ``scale`` (default 1/255), then ``mean`` / ``std`` per channel: ``(x * scale - mean) / std``
  in float32. For an integer input dtype (e.g. uint8) the pixels are passed unscaled and
  ``scale``/``mean``/``std`` must not be given.
- ``layout: NCHW`` (default) or ``NHWC``.

The build system hashes the files a dataset reads (:func:`input_files`) and may then call
:func:`load_samples` with that list of files instead of the project directory (the source's
path keys may then be absent from ``spec``; the files are the same, in the same order).

Samples are stored with :func:`save_samples` as an ``.npz`` whose members are
``<input>__<index>`` (written with fixed zip timestamps: byte-identical for equal samples;
``numpy.savez`` stamps the current time into each member, so its bytes vary between runs).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StageError
from buildsys.recipe.dataset_files import (
    SOURCE_KINDS,
    builtin_images,
    input_files,
    source_kind,
    split_sizes,
)

if TYPE_CHECKING:  # numpy loads only when a stage needs data: planning must stay light
    import numpy as np

__all__ = [
    "SOURCE_KINDS",
    "builtin_images",
    "input_files",
    "load_samples",
    "load_samples_npz",
    "save_samples",
]

SPLITS = ("calibration", "validation")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# Loading samples
# --------------------------------------------------------------------------------------------


def load_samples(spec: Mapping[str, Any], project_dir: Path | Sequence[Path],
                 inputs: Mapping[str, Mapping[str, Any]], split: str,
                 count: int | None = None) -> list[dict[str, np.ndarray]]:
    """The ``split`` ("calibration" or "validation") samples of a dataset, model-ready.

    ``inputs``: the model inputs, ``{name: {"shape": [...], "dtype": "float32"}}`` in call
    order. ``project_dir``: the directory relative paths start from, or the list of files
    :func:`input_files` returned (then the source's path key may be absent from ``spec``).
    ``count``: at most this many samples (the first ones of the split); None for all.
    """
    if split not in SPLITS:
        raise StageError(f"dataset split must be calibration or validation, not {split!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 0):
        raise StageError(f"sample count must be an integer ≥ 0, got {count!r}")
    if not inputs:
        raise StageError("the model declares no inputs")
    files: list[Path] | None = None
    base: Path | None = None
    if isinstance(project_dir, str | Path):
        base = Path(project_dir)
    else:
        files = [Path(f) for f in project_dir]
    kind = source_kind(spec, files)
    if kind == "random":
        return _random(spec, inputs, split, count)
    if kind in ("images", "skimage"):
        if files is None:
            assert base is not None
            files = input_files(spec, base)
        where = (f"images glob {spec['images']!r}" if "images" in spec else
                 f"skimage list {list(spec['skimage'])}" if "skimage" in spec else
                 "the dataset's image files")
        start, stop = _bounds(spec, len(files), split, count, where)
        shape, dtype = _image_input(inputs)
        return [{next(iter(inputs)): _load_image(f, spec.get("preprocess") or {}, shape, dtype)}
                for f in files[start:stop]]
    if kind in ("npz", "npy"):
        if files is None:
            assert base is not None
            files = input_files(spec, base)
        if len(files) != 1:
            raise StageError(f"a {kind} dataset reads one file, got {len(files)}")
        samples = _from_arrays(files[0], kind, inputs)
        where = f"{kind} file {files[0].name}"
    else:
        samples = _from_python(str(spec["python"]), base, inputs)
        where = f"python source {spec['python']!r}"
    start, stop = _bounds(spec, len(samples), split, count, where)
    return samples[start:stop]


def _bounds(spec: Mapping[str, Any], total: int, split: str, count: int | None,
            where: str) -> tuple[int, int]:
    calibration, validation = split_sizes(spec, total, where)
    start, size = (0, calibration) if split == "calibration" else (calibration, validation)
    if count is not None:
        if count > size:
            raise StageError(f"{count} {split} samples asked for, but the {split} split of "
                             f"{where} has {size}")
        size = count
    return start, start + size


def _random(spec: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]], split: str,
            count: int | None) -> list[dict[str, np.ndarray]]:
    import numpy as np
    options = dict(spec["random"] or {})
    unknown = sorted(set(options) - {"seed", "low", "high"})
    if unknown:
        raise StageError(f"dataset random takes seed, low, high; unknown: {unknown}")
    seed, low, high = options.get("seed", 0), options.get("low", 0.0), options.get("high", 1.0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StageError(f"dataset random seed must be an integer ≥ 0, got {seed!r}")
    if not high >= low:
        raise StageError(f"dataset random needs low ≤ high, got low={low}, high={high}")
    size = spec.get(split)
    if size is None:
        size = count
    if size is None:
        raise StageError(f"dataset random: say how many {split} samples to make "
                         f"({split}: N)")
    if count is not None:
        if count > size:
            raise StageError(f"{count} {split} samples asked for, but the random dataset's "
                             f"{split} split has {size}")
        size = count
    warnings.warn("random dataset: accuracy and agreement figures computed on random inputs "
                  "are meaningless (use it for latency-only builds)", UserWarning, stacklevel=2)
    stream = SPLITS.index(split)
    samples = []
    for index in range(size):
        rng = np.random.default_rng([seed, stream, index])
        sample = {}
        for name, info in inputs.items():
            shape, dtype = tuple(info["shape"]), np.dtype(info.get("dtype", "float32"))
            if dtype.kind in "iu":
                values = rng.integers(int(low), int(high), size=shape, endpoint=True)
            else:
                values = rng.uniform(low, high, size=shape)
            sample[name] = values.astype(dtype)
        samples.append(sample)
    return samples


def _fit(array: np.ndarray, name: str, info: Mapping[str, Any], where: str) -> np.ndarray:
    """One sample for input ``name``: its full shape, or its shape without a batch of 1."""
    import numpy as np
    shape = tuple(int(d) for d in info["shape"])
    dtype = np.dtype(info.get("dtype", "float32"))
    array = np.asarray(array)
    if array.shape != shape:
        if shape[:1] == (1,) and array.shape == shape[1:]:
            array = array[None]
        else:
            raise StageError(f"{where}: input {name!r} should be {list(shape)} per sample, "
                             f"got {list(array.shape)}")
    if array.dtype != dtype:
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise StageError(f"{where}: input {name!r} is {dtype}, the data is {array.dtype} "
                             "(which does not convert without loss of kind)")
        array = array.astype(dtype)
    return np.ascontiguousarray(array)


def _from_arrays(path: Path, kind: str, inputs: Mapping[str, Mapping[str, Any]]
                 ) -> list[dict[str, np.ndarray]]:
    import numpy as np
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError for object arrays, OSError/BadZipFile for bad files
        raise StageError(f"dataset {kind} file {path} could not be read without pickle "
                         f"({type(e).__name__}: {e})") from e
    if kind == "npy":
        if len(inputs) != 1:
            raise StageError(f"dataset npy file {path.name} feeds one input, the model has "
                             f"{len(inputs)} ({', '.join(inputs)}); use an npz file")
        arrays = {next(iter(inputs)): loaded}
    else:
        with loaded:
            missing = [n for n in inputs if n not in loaded.files]
            if missing:
                raise StageError(f"dataset npz file {path.name} has no array for input "
                                 f"{missing[0]!r} (it has {', '.join(loaded.files) or 'none'})")
            try:
                arrays = {n: loaded[n] for n in inputs}
            except Exception as e:  # npz members load lazily: object arrays fail here
                raise StageError(f"dataset npz file {path} could not be read without pickle "
                                 f"({type(e).__name__}: {e})") from e
    lengths = {n: (a.shape[0] if a.ndim else 0) for n, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise StageError(f"dataset {kind} file {path.name}: the arrays hold different numbers "
                         f"of samples {lengths}")
    samples = []
    for name, array in arrays.items():
        info = inputs[name]
        shape = tuple(int(d) for d in info["shape"])
        if array.shape[1:] != shape and not (shape[:1] == (1,) and array.shape[1:] == shape[1:]):
            raise StageError(f"dataset {kind} file {path.name}: input {name!r} should be "
                             f"(samples, {', '.join(map(str, shape))}) or, batch 1, (samples, "
                             f"{', '.join(map(str, shape[1:]))}); got {tuple(array.shape)}")
    for index in range(next(iter(lengths.values()))):
        samples.append({n: _fit(a[index], n, inputs[n], f"{kind} file {path.name}")
                        for n, a in arrays.items()})
    return samples


def _from_python(entry: str, base: Path | None, inputs: Mapping[str, Mapping[str, Any]]
                 ) -> list[dict[str, np.ndarray]]:
    from buildsys.backends.torch_models import import_callable

    factory = import_callable(entry, base, "dataset python")
    try:
        produced = factory()
        items = list(produced) if isinstance(produced, Iterable) else None
    except StageError:
        raise
    except Exception as e:
        raise StageError(f"dataset python {entry!r} failed: {type(e).__name__}: {e}") from e
    if items is None:
        raise StageError(f"dataset python {entry!r} returned {type(produced).__name__}, not an "
                         "iterable of samples")
    single = next(iter(inputs)) if len(inputs) == 1 else None
    samples = []
    for index, item in enumerate(items):
        where = f"dataset python {entry!r}, sample {index}"
        if not isinstance(item, Mapping):
            if single is None:
                raise StageError(f"{where}: the model has inputs {', '.join(inputs)}, so each "
                                 "sample must be a dict {input: array}")
            item = {single: item}
        missing = [n for n in inputs if n not in item]
        if missing:
            raise StageError(f"{where} has no input {missing[0]!r} (it has "
                             f"{', '.join(map(str, item))})")
        samples.append({n: _fit(item[n], n, inputs[n], where) for n in inputs})
    return samples


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _image_input(inputs: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[int, ...], np.dtype]:
    import numpy as np
    if len(inputs) != 1:
        raise StageError(f"image datasets feed single-input models; this model has "
                         f"{len(inputs)} inputs ({', '.join(inputs)}): use npz or python")
    name, info = next(iter(inputs.items()))
    shape = tuple(int(d) for d in info["shape"])
    if len(shape) != 4 or shape[0] != 1:
        raise StageError(f"image datasets need an input of shape [1, C, H, W] or [1, H, W, C]; "
                         f"input {name!r} is {list(shape)}")
    return shape, np.dtype(info.get("dtype", "float32"))


def _load_image(path: Path, preprocess: Mapping[str, Any], shape: tuple[int, ...],
                dtype: np.dtype) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    layout = preprocess.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise StageError(f"preprocess layout must be NCHW or NHWC, not {layout!r}")
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (
        shape[3], shape[1], shape[2])
    if channels != 3:
        raise StageError(f"image datasets make RGB (3-channel) tensors; the input is "
                         f"{list(shape)} ({layout}, {channels} channels)")
    size = preprocess.get("resize") or [height, width]
    if [int(v) for v in size] != [height, width]:
        raise StageError(f"preprocess resize {list(size)} does not give the input's "
                         f"{height}×{width} ({layout} {list(shape)})")
    convert = preprocess.get("convert")
    if convert not in (None, "rgb"):
        raise StageError(f"preprocess convert must be 'rgb', not {convert!r}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                if convert != "rgb":
                    raise StageError(f"image {path.name} is {image.mode}, not RGB; add "
                                     "`convert: rgb` under the dataset's preprocess to convert "
                                     "it (alpha is dropped)")
                image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), resample=Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as e:
        raise StageError(f"image {path} could not be read ({type(e).__name__}: {e})") from e
    if dtype.kind in "iu":
        given = [k for k in ("scale", "mean", "std") if k in preprocess]
        if given:
            raise StageError(f"the input is {dtype}: pixels are passed unscaled, so "
                             f"preprocess {', '.join(given)} cannot apply")
        array = pixels.astype(dtype)
    else:
        array = pixels.astype(np.float32) * np.float32(preprocess.get("scale", 1 / 255))
        for key in ("mean", "std"):
            values = preprocess.get(key)
            if values is not None and len(values) not in (1, 3):
                raise StageError(f"preprocess {key} needs 1 or 3 values, got {list(values)}")
        if preprocess.get("mean") is not None:
            array = array - np.asarray(preprocess["mean"], dtype=np.float32)
        if preprocess.get("std") is not None:
            std = np.asarray(preprocess["std"], dtype=np.float32)
            if np.any(std == 0):
                raise StageError(f"preprocess std {list(preprocess['std'])} contains 0")
            array = array / std
        array = array.astype(dtype)
    if layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array[None])


# --------------------------------------------------------------------------------------------
# Sample files
# --------------------------------------------------------------------------------------------


def save_samples(samples: Sequence[Mapping[str, np.ndarray]], path: Path) -> None:
    """Write samples as ``.npz`` (members ``<input>__<index>.npy``), byte-deterministic.

    Members are stored uncompressed with a fixed timestamp, in sample order then input order;
    ``numpy.load`` reads the file. Object arrays are refused.
    """
    import numpy as np
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, sample in enumerate(samples):
            for name, value in sample.items():
                if "/" in name or not name:
                    raise StageError(f"sample input name {name!r} cannot be stored")
                array = np.asarray(value)
                if array.dtype.hasobject:
                    raise StageError(f"sample {index} input {name!r} is an object array")
                info = zipfile.ZipInfo(f"{name}__{index}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array),
                                              allow_pickle=False)


def load_samples_npz(path: Path) -> list[dict[str, np.ndarray]]:
    """Read what :func:`save_samples` wrote (any npz with ``<input>__<index>`` keys)."""
    import numpy as np
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise StageError(f"samples file {path} could not be read ({type(e).__name__}: {e})"
                         ) from e
    samples: dict[int, dict[str, np.ndarray]] = {}
    with data:
        for key in data.files:
            name, sep, index = key.rpartition("__")
            if not sep or not name or not index.isdigit():
                raise StageError(f"samples file {path}: member {key!r} is not <input>__<index>")
            try:
                samples.setdefault(int(index), {})[name] = data[key]
            except Exception as e:  # object arrays (pickle refused), truncated members
                raise StageError(f"samples file {path}: member {key!r} could not be read "
                                 f"({type(e).__name__}: {e})") from e
    if sorted(samples) != list(range(len(samples))):
        raise StageError(f"samples file {path}: sample indices are not 0..{len(samples) - 1}")
    return [samples[i] for i in range(len(samples))]
