"""Which files a recipe's dataset entry reads, found without reading them.

The recipe loader checks them (a glob that matches nothing, too few images for the splits);
the planner hashes them; `buildsys.data.datasets` loads them. Nothing here imports numpy,
Pillow or scikit-image (its bundled photos are found by their install location). The dataset
sources and splits are described in `buildsys.data.datasets`.
"""

from __future__ import annotations

import glob
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from buildsys.errors import StageError

SOURCE_KINDS = ("images", "skimage", "npz", "npy", "python", "random")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def source_kind(spec: Mapping[str, Any], files: Sequence[Path] | None = None) -> str:
    kinds = [k for k in SOURCE_KINDS if k in spec]
    if len(kinds) > 1:
        raise StageError(f"a dataset has exactly one source; this one has {', '.join(kinds)}")
    if kinds:
        return kinds[0]
    if files:  # the build system passed the files and dropped the path key
        suffixes = {f.suffix.lower() for f in files}
        if suffixes == {".npz"}:
            return "npz"
        if suffixes == {".npy"}:
            return "npy"
        return "images"
    raise StageError(f"a dataset needs one source: {', '.join(SOURCE_KINDS)} "
                     f"(got keys {sorted(spec)})")


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image (found without importing it)."""
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        raise StageError("skimage sample photos need scikit-image: "
                         "`pip install 'modelbuild[onnx]'`")
    return Path(next(iter(found.submodule_search_locations))) / "data"


def builtin_images(names: Sequence[str]) -> list[Path]:
    """Paths of scikit-image's bundled sample photos, e.g. ``["coffee", "rocket.jpg"]``.

    A name is a file stem (``astronaut``) or a file name (``astronaut.png``) in the installed
    ``skimage/data`` folder; only files that ship inside the wheel (no download) are found.
    """
    folder = skimage_data_dir()
    available = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_name = {p.name: p for p in available}
    by_stem = {p.stem: p for p in available}
    paths = []
    for name in names:
        path = by_name.get(str(name)) or by_stem.get(str(name))
        if path is None:
            raise StageError(f"skimage photo {name!r} is not bundled in scikit-image's data "
                             f"folder {folder}; bundled: {', '.join(sorted(by_stem))}")
        paths.append(path)
    return paths


def _glob(pattern: str, project_dir: Path) -> list[Path]:
    root = Path(project_dir)
    if Path(pattern).is_absolute():
        matches = [Path(p) for p in glob.glob(pattern, recursive=True)]
        return sorted((p for p in matches if p.is_file()), key=lambda p: p.as_posix())
    matches = glob.glob(pattern, root_dir=root, recursive=True)
    relative = sorted(Path(p).as_posix() for p in matches if (root / p).is_file())
    return [root / p for p in relative]


def _path(spec: Mapping[str, Any], key: str, project_dir: Path) -> Path:
    path = Path(spec[key])
    if not path.is_absolute():
        path = Path(project_dir) / path
    if not path.is_file():
        raise StageError(f"dataset {key} file {spec[key]!r} does not exist (looked at {path})")
    return path


def split_sizes(spec: Mapping[str, Any], total: int, where: str) -> tuple[int, int]:
    calibration, validation = spec.get("calibration"), spec.get("validation")
    for name, value in (("calibration", calibration), ("validation", validation)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise StageError(f"dataset {name} must be a count ≥ 0, got {value!r}")
    if calibration is None and validation is None:
        raise StageError(f"{where} has {total} samples: say how many are for calibration and "
                         "validation (e.g. calibration: 8, validation: 4; one of them is "
                         "enough, the other takes the rest)")
    if calibration is None:
        calibration = total - validation
    if validation is None:
        validation = total - calibration
    if calibration < 0 or validation < 0 or calibration + validation > total:
        raise StageError(f"{where} has {total} samples but the dataset asks for "
                         f"{spec.get('calibration', 'the rest')} calibration + "
                         f"{spec.get('validation', 'the rest')} validation; add samples or "
                         "lower the counts")
    return calibration, validation


def input_files(spec: Mapping[str, Any], project_dir: Path) -> list[Path]:
    """The files the dataset reads, in load order, without loading them (for hashing).

    For ``images``/``skimage`` with both split counts given, only the first
    ``calibration + validation`` images (those ever read). ``python`` and ``random`` read no
    data file (the build system tracks a ``python`` source's code itself). Raises
    ``StageError`` when a glob matches nothing, a file is missing or there are too few
    images for the split counts.
    """
    kind = source_kind(spec)
    if kind == "images":
        files = _glob(str(spec["images"]), project_dir)
        if not files:
            raise StageError(f"dataset images glob {spec['images']!r} matches no file "
                             f"(relative to {project_dir})")
        where = f"images glob {spec['images']!r} ({len(files)} files)"
    elif kind == "skimage":
        names = spec["skimage"]
        if isinstance(names, str) or not names:
            raise StageError("dataset skimage must be a non-empty list of photo names, e.g. "
                             "[astronaut, coffee]")
        files = builtin_images(list(names))
        where = f"skimage list ({len(files)} photos)"
    elif kind in ("npz", "npy"):
        return [_path(spec, kind, project_dir)]
    else:
        return []
    calibration, validation = split_sizes(spec, len(files), f"the dataset's {where}")
    return files[: calibration + validation]


LABEL_KINDS = ("masks", "file", "python")


def label_kind(labels: Mapping[str, Any]) -> str:
    kinds = [k for k in LABEL_KINDS if k in labels]
    if len(kinds) != 1:
        raise StageError(f"dataset labels need exactly one of {', '.join(LABEL_KINDS)}; "
                         f"got {', '.join(kinds) or 'none'}")
    return kinds[0]


def label_files(spec: Mapping[str, Any], project_dir: Path) -> list[Path]:
    """The label files a dataset reads, in sample order (for hashing), without reading them.

    ``masks``: one mask image per sample image, matched by file stem (``img/a.jpg`` ↔
    ``masks/a.png``), so the list lines up with :func:`input_files`. ``file``: the one class-id
    file. ``python`` (and no labels): none.
    """
    labels = spec.get("labels")
    if not labels:
        return []
    kind = label_kind(labels)
    if kind == "file":
        return [_path(labels, "file", project_dir)]
    if kind == "python":
        return []
    if source_kind(spec) not in ("images", "skimage"):
        raise StageError("dataset labels masks are matched to image files by name: they need "
                         "an images or skimage source (use labels python for other sources)")
    masks = _glob(str(labels["masks"]), project_dir)
    by_stem: dict[str, Path] = {}
    for mask in masks:
        if mask.stem in by_stem:
            raise StageError(f"dataset labels masks {labels['masks']!r}: two masks are named "
                             f"{mask.stem!r} ({by_stem[mask.stem].name}, {mask.name})")
        by_stem[mask.stem] = mask
    images = input_files(spec, project_dir)
    missing = [p.name for p in images if p.stem not in by_stem]
    if missing:
        raise StageError(f"dataset labels masks {labels['masks']!r}: no mask named like "
                         f"image{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''} (matched by file stem)")
    return [by_stem[p.stem] for p in images]
