"""What may be sent to AI Hub, checked locally before anything is uploaded: model files and
directories (the way qai_hub 0.56 will judge them), datasets and input specs."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from buildsys.backends.aihub.jobs import JOB_ID_RE
from buildsys.errors import StageError

# qai_hub 0.56 api_utils._STR_TO_TETRA_TYPE / Client._SUPPORTED_NUMPY_DTYPES
SUPPORTED_TENSOR_DTYPES = (
    "float32",
    "float16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "bool",
)

ModelKind = Literal[
    "pt2",
    "onnx",
    "onnx_dir",
    "aimet_onnx",
    "precompiled_qnn_onnx",
    "tflite",
    "qnn_context_binary",
    "qnn_dlc",
]
KIND_TEXT: dict[str, str] = {
    "pt2": "torch.export program (.pt2)",
    "onnx": "ONNX file",
    "onnx_dir": "ONNX directory (.onnx + .data)",
    "aimet_onnx": "AIMET ONNX directory (.onnx + .encodings)",
    "precompiled_qnn_onnx": "precompiled QNN ONNX directory (.onnx + .bin)",
    "tflite": "TFLite model (.tflite)",
    "qnn_context_binary": "QNN context binary (.bin)",
    "qnn_dlc": "QNN DLC (.dlc)",
}
ALLOWED_KINDS: dict[str, tuple[str, ...]] = {
    "compile": ("pt2", "onnx", "onnx_dir", "aimet_onnx"),
    "quantize": ("onnx", "onnx_dir"),
    "link": ("qnn_dlc",),
    "inference": (
        "onnx",
        "onnx_dir",
        "precompiled_qnn_onnx",
        "tflite",
        "qnn_context_binary",
        "qnn_dlc",
    ),
}
FILE_KINDS: dict[str, ModelKind] = {
    ".pt2": "pt2",
    ".onnx": "onnx",
    ".tflite": "tflite",
    ".bin": "qnn_context_binary",
    ".dlc": "qnn_dlc",
}
# Hub model types (SourceModelType names) that must be compiled before they can run.
NEEDS_COMPILATION = {"TORCHSCRIPT", "TORCH_EXPORTED_PROGRAM", "AIMET_ONNX"}


@dataclass(frozen=True)
class ModelDir:
    """A validated model directory as qai_hub uploads it (zipped as is)."""

    path: Path
    onnx: str
    data: str | None = None
    encodings: str | None = None
    context_binary: str | None = None

    @property
    def kind(self) -> ModelKind:
        if self.context_binary is not None:
            return "precompiled_qnn_onnx"
        return "aimet_onnx" if self.encodings is not None else "onnx_dir"

def external_locations(onnx_path: Path) -> set[str]:
    """File names an ONNX model's tensors reference as external data (model not loaded)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise StageError(f"{onnx_path} is not a readable ONNX model: {exc}") from None

    def tensors(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    locations = set()
    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            locations.add(entries.get("location", ""))
    return locations


def validate_model_dir(
    path: str | os.PathLike[str], *, require_encodings: bool = False
) -> ModelDir:
    """Check a model directory the way qai_hub 0.56 will judge it, with errors that say what to do.

    Accepted: exactly one ``.onnx`` plus at most one ``.data`` (its external weights) and at most
    one ``.encodings`` (AIMET ONNX), or exactly one ``.onnx`` plus one ``.bin`` (precompiled QNN
    ONNX). Nothing else may be in the directory: qai_hub zips and uploads it as is.
    """
    root = Path(path)
    if not root.is_dir():
        raise StageError(f"model directory {root} does not exist or is not a directory")
    entries = sorted(os.listdir(root))
    by_ext: dict[str, list[str]] = {".onnx": [], ".data": [], ".encodings": [], ".bin": []}
    unexpected = []
    for entry in entries:
        ext = os.path.splitext(entry)[1]
        if ext in by_ext and (root / entry).is_file():
            by_ext[ext].append(entry)
        else:
            unexpected.append(entry)
    what = "AIMET ONNX directory" if require_encodings else "model directory"
    layout = "exactly one .onnx, at most one .data and " + (
        "exactly one .encodings" if require_encodings else "at most one .encodings"
    )
    if unexpected:
        raise StageError(
            f"{what} {root} contains {', '.join(unexpected)}: it may hold only {layout} "
            "(qai_hub uploads the directory as is); move the other files out"
        )
    onnx_files, data, encodings, bins = (
        by_ext[e] for e in (".onnx", ".data", ".encodings", ".bin")
    )
    if len(onnx_files) != 1:
        found = ", ".join(onnx_files) if onnx_files else "none"
        raise StageError(f"{what} {root} must contain exactly one .onnx file (found: {found})")
    for ext, files in ((".data", data), (".encodings", encodings), (".bin", bins)):
        if len(files) > 1:
            raise StageError(
                f"{what} {root} must contain at most one {ext} file (found: {', '.join(files)})"
            )
    if require_encodings and not encodings:
        raise StageError(
            f"{what} {root} has no .encodings file: export the AIMET model with its encodings "
            f"next to {onnx_files[0]}"
        )
    if bins and (data or encodings):
        raise StageError(
            f"{what} {root} mixes a .bin context binary with .data/.encodings files; a "
            "precompiled QNN ONNX directory holds only the .onnx and its .bin"
        )
    if encodings:
        enc_path = root / encodings[0]
        try:
            parsed = json.loads(enc_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, json.JSONDecodeError) as exc:
            raise StageError(f"AIMET encodings file {enc_path} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise StageError(f"AIMET encodings file {enc_path} must hold a JSON object")
    if not bins:
        referenced = external_locations(root / onnx_files[0])
        wrong = sorted(loc for loc in referenced if loc not in data)
        if wrong:
            have = data[0] if data else "no .data file"
            raise StageError(
                f"{root / onnx_files[0]} stores weights in {', '.join(wrong)}, but the directory "
                f"has {have}: save the ONNX with all external data in one file named "
                "<something>.data inside the directory"
            )
    return ModelDir(
        path=root,
        onnx=onnx_files[0],
        data=data[0] if data else None,
        encodings=encodings[0] if encodings else None,
        context_binary=bins[0] if bins else None,
    )


def validate_aimet_dir(path: str | os.PathLike[str]) -> ModelDir:
    """An AIMET ONNX directory: one .onnx, optional .data, exactly one .encodings."""
    return validate_model_dir(path, require_encodings=True)


def model_kind(path: Path) -> ModelKind:
    if path.is_dir():
        return validate_model_dir(path).kind
    ext = path.suffix.lower()
    kind = FILE_KINDS.get(ext)
    if kind is None:
        raise StageError(
            f"unsupported model file {path}: expected one of {', '.join(sorted(FILE_KINDS))} "
            "or a model directory"
        )
    if kind == "pt2" and not zipfile.is_zipfile(path):
        raise StageError(
            f"{path} is not a torch.export archive (a .pt2 is a zip written by torch.export.save)"
        )
    if kind == "onnx":
        external = external_locations(path)
        if external:
            raise StageError(
                f"ONNX model {path} keeps its weights in external file(s) "
                f"{', '.join(sorted(external))}, which qai_hub would not upload: put {path.name} "
                "and one <name>.data file alone in a directory and pass the directory"
            )
    return kind


def check_dataset(
    data: Mapping[str, Sequence[np.ndarray]], what: str
) -> dict[str, list[np.ndarray]]:
    if not isinstance(data, Mapping) or not data:
        raise StageError(f"{what} must be a non-empty dict of input name -> list of numpy arrays")
    out: dict[str, list[np.ndarray]] = {}
    counts = {}
    for name, arrays in data.items():
        if not isinstance(name, str) or not name:
            raise StageError(f"{what}: input names must be non-empty strings, got {name!r}")
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence) or not arrays:
            raise StageError(f"{what}[{name!r}] must be a non-empty list of numpy arrays")
        checked = []
        for i, arr in enumerate(arrays):
            if not isinstance(arr, np.ndarray):
                raise StageError(
                    f"{what}[{name!r}][{i}] is {type(arr).__name__}, not a numpy array"
                )
            if arr.dtype.name not in SUPPORTED_TENSOR_DTYPES:
                raise StageError(
                    f"{what}[{name!r}][{i}] has dtype {arr.dtype.name}; AI Hub accepts "
                    f"{', '.join(SUPPORTED_TENSOR_DTYPES)}: cast it first"
                )
            checked.append(arr)
        out[name] = checked
        counts[name] = len(checked)
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise StageError(f"{what}: every input needs the same number of samples ({detail})")
    return out


def check_input_specs(
    specs: Mapping[str, tuple[Sequence[int], Any]] | None,
) -> dict[str, tuple[tuple[int, ...], str]] | None:
    if not specs:
        return None
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, spec in specs.items():
        try:
            shape, dtype = spec
            shape_t = tuple(int(d) for d in shape)
            dtype_s = np.dtype(dtype).name
        except (TypeError, ValueError):
            raise StageError(
                f"input_specs[{name!r}] must be (shape, dtype), e.g. ((1, 3, 224, 224), "
                f"'float32'), got {spec!r}"
            ) from None
        if any(d < 1 for d in shape_t):
            raise StageError(f"input_specs[{name!r}] has a non-positive dimension: {shape_t}")
        if dtype_s not in SUPPORTED_TENSOR_DTYPES:
            raise StageError(
                f"input_specs[{name!r}] dtype {dtype_s} is not accepted by AI Hub "
                f"({', '.join(SUPPORTED_TENSOR_DTYPES)})"
            )
        out[str(name)] = (shape_t, dtype_s)
    return out


def check_model(model: str | os.PathLike[str], purpose: str) -> Path | str:
    """Local validation only: a model path (checked) or a job id (not yet looked up)."""
    allowed = ALLOWED_KINDS[purpose]
    path = Path(model)
    if path.exists():
        kind = model_kind(path)
        if kind not in allowed:
            raise StageError(
                f"{path} is a {KIND_TEXT[kind]}, which {purpose} jobs cannot take; "
                f"{purpose} jobs accept: {', '.join(KIND_TEXT[k] for k in allowed)}"
            )
        return path
    text = os.fspath(model)
    if not JOB_ID_RE.fullmatch(text):
        raise StageError(
            f"model {text!r} not found: expected a path to a "
            f"{', '.join(KIND_TEXT[k] for k in allowed)}, or the id of an AI Hub compile "
            "or quantize job (like 'jgdq2e8zp')"
        )
    return text
