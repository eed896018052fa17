"""Qualcomm AI Hub backend: resolve devices, submit compile/quantize/inference jobs, download.

Everything goes through the real ``qai_hub`` (0.56) module-level API, held by ``AIHubClient`` as a
module-like object so tests can hand in ``unittest.mock.create_autospec(qai_hub)``. ``qai_hub`` is
imported lazily (it pulls in requests, h5py, botocore ...).

Rules this module keeps:

* Fail fast without network when no API token is configured: ``check_token`` reads the same INI
  file qai_hub 0.56 reads (``$QAIHUB_CLIENT_INI`` if set, else ``~/.qai_hub/client.ini``, section
  ``[api]`` with ``api_token``, ``api_url``, ``web_url``) and tells the user to run
  ``qai-hub configure --api_token <your token>``.
* The token never appears in a message, log line, exception or return value: every text that
  comes from qai_hub is redacted, the config parser's own errors (which quote file lines) are
  never shown, and errors are raised ``from None`` so no chained traceback carries them.
* Transient failures (qai_hub ``InternalError``/``RateLimitedError``, HTTP 429/5xx, connection
  errors, time-outs) are retried a bounded number of times with exponential back-off and an
  injectable ``sleep``; qai_hub's own unbounded rate-limit loop is disabled (``retry=False``).
* Submitting returns the job id at once; ``wait_for`` polls all jobs together and reports a
  failed job as an outcome instead of raising.
* Downloads land in a temporary directory inside ``dest_dir`` and are moved into place with
  ``os.replace``: no half-written artifact is ever visible under its final name.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import difflib
import functools
import io
import json
import logging
import os
import re
import shlex
import tempfile
import time
import types
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import numpy as np

from buildsys.errors import StageError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEVICE_CACHE_TTL_S",
    "SUPPORTED_TENSOR_DTYPES",
    "TARGET_RUNTIMES",
    "TOKEN_HELP",
    "AIHubClient",
    "DeviceInfo",
    "JobOutcome",
    "ModelDir",
    "check_reachable",
    "check_token",
    "summarize_profile",
    "validate_aimet_dir",
    "validate_model_dir",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- configuration (mirrors qai_hub 0.56 api_utils.get_config_path / load_api_config_from_file) ---

CONFIG_ENV = "QAIHUB_CLIENT_INI"
DEFAULT_CONFIG_PATH = "~/.qai_hub/client.ini"
_REQUIRED_KEYS = ("api_token", "api_url", "web_url")
_DEFAULT_WEB_URL = "https://workbench.aihub.qualcomm.com"
TOKEN_HELP = (
    "run `qai-hub configure --api_token <your token>` (the token is on your AI Hub account "
    "page), then rerun the build"
)
_REDACTED = "<redacted>"

# --- what we submit ---

TARGET_RUNTIMES = ("tflite", "qnn_context_binary", "qnn_dlc", "onnx", "precompiled_qnn_onnx")
_WEIGHT_DTYPES = {"int8": "INT8", "int4": "INT4"}
_ACTIVATION_DTYPES = {"int8": "INT8", "int16": "INT16"}
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
# AI Hub job ids: "j" followed by lowercase letters and digits (e.g. "jgdq2e8zp").
_JOB_ID_RE = re.compile(r"j[0-9a-z]{5,24}")
_ATTRIBUTE_RE = re.compile(r"[a-z][a-z0-9_]*:\S+")

DEVICE_CACHE_TTL_S = 24 * 3600.0
_DEVICE_CACHE_VERSION = 1

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
_KIND_TEXT: dict[str, str] = {
    "pt2": "torch.export program (.pt2)",
    "onnx": "ONNX file",
    "onnx_dir": "ONNX directory (.onnx + .data)",
    "aimet_onnx": "AIMET ONNX directory (.onnx + .encodings)",
    "precompiled_qnn_onnx": "precompiled QNN ONNX directory (.onnx + .bin)",
    "tflite": "TFLite model (.tflite)",
    "qnn_context_binary": "QNN context binary (.bin)",
    "qnn_dlc": "QNN DLC (.dlc)",
}
_ALLOWED_KINDS: dict[str, tuple[str, ...]] = {
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
_FILE_KINDS: dict[str, ModelKind] = {
    ".pt2": "pt2",
    ".onnx": "onnx",
    ".tflite": "tflite",
    ".bin": "qnn_context_binary",
    ".dlc": "qnn_dlc",
}
# Hub model types (SourceModelType names) that must be compiled before they can run.
_NEEDS_COMPILATION = {"TORCHSCRIPT", "TORCH_EXPORTED_PROGRAM", "AIMET_ONNX"}


# =====================================================================================
# Plain data returned to the build graph
# =====================================================================================


@dataclass(frozen=True)
class DeviceInfo:
    """One AI Hub device (a name + OS version), JSON-able through ``to_dict``/``from_dict``."""

    name: str
    os: str
    attributes: list[str] = field(default_factory=list)
    chipset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceInfo:
        return cls(
            name=str(data["name"]),
            os=str(data["os"]),
            attributes=[str(a) for a in data.get("attributes", [])],
            chipset=str(data.get("chipset", "")),
        )

    @classmethod
    def from_hub(cls, device: Any) -> DeviceInfo:
        attrs = device.attributes
        attributes = sorted([attrs] if isinstance(attrs, str) else [str(a) for a in attrs])
        chipset = next(
            (a.split(":", 1)[1] for a in attributes if a.startswith("chipset:")), ""
        )
        return cls(name=str(device.name), os=str(device.os), attributes=attributes, chipset=chipset)


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended. ``status`` is a qai_hub status code ("SUCCESS", "FAILED") or one of ours:
    "ERROR" (the job could not be queried) or "TIMEOUT" (still running when ``wait_for`` gave up).
    """

    job_id: str
    status: str
    url: str
    message: str = ""

    @property
    def success(self) -> bool:
        return self.status == "SUCCESS"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "success": self.success}


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


# =====================================================================================
# Token / configuration
# =====================================================================================


@dataclass(frozen=True)
class _HubConfig:
    path: Path
    token: str = field(repr=False)
    web_url: str
    api_url: str = ""


def _config_path() -> Path:
    # Same precedence as qai_hub 0.56 api_utils.get_config_path(profile=None).
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)))


class _TokenError(StageError):
    """No usable API token: nothing AI Hub can do will work."""


class _HubRejected(StageError):
    """AI Hub answered with a user error (bad input, unknown id, ...)."""


def _token_message(reason: str) -> str:
    return (
        f"Qualcomm AI Hub is not configured: {reason}. To fix it, {TOKEN_HELP}. "
        f"(qai_hub reads ${CONFIG_ENV} if set, else {DEFAULT_CONFIG_PATH}.)"
    )


def _load_config() -> _HubConfig:
    """Read the qai_hub client config without any network access; StageError if unusable.

    Never quotes the file or a parser error: both may contain the token.
    """
    path = _config_path()
    if not path.is_file():
        raise _TokenError(_token_message(f"no configuration file at {path}"))
    parser = configparser.ConfigParser()  # the interpolating parser qai_hub itself uses
    try:
        parser.read([path], encoding="utf-8")
    except (configparser.Error, OSError, UnicodeError):
        raise _TokenError(_token_message(f"{path} is not a readable INI file")) from None
    if not parser.has_section("api"):
        raise _TokenError(_token_message(f"{path} has no [api] section"))
    section = parser["api"]
    missing = [key for key in _REQUIRED_KEYS if key not in section]
    if missing:
        raise _TokenError(_token_message(f"{path} has no {', '.join(missing)} in [api]"))
    try:
        token = section["api_token"]
        web_url = section["web_url"]
        api_url = section["api_url"]
    except (configparser.Error, ValueError):
        raise _TokenError(
            _token_message(f"qai_hub cannot read the [api] values in {path} (a stray '%'?)")
        ) from None
    if not token.strip():
        raise _TokenError(_token_message(f"the api_token in {path} is empty"))
    return _HubConfig(path=path, token=token.strip(), web_url=web_url.strip() or _DEFAULT_WEB_URL,
                      api_url=api_url.strip())


def check_token(hub: Any = None) -> None:
    """Raise ``StageError`` (no network) unless qai_hub has an API token configured.

    ``hub`` is accepted so callers can pass the module object they use; the check reads only the
    configuration file that qai_hub's module-level functions read.
    """
    del hub
    _load_config()


def check_reachable() -> None:
    """Raise ``StageError`` at once if AI Hub's host does not resolve (no network, no proxy)."""
    from buildsys.backends.aihub_network import unreachable_reason

    reason = unreachable_reason(_load_config().api_url)
    if reason:
        raise StageError(reason)


# =====================================================================================
# Error classification
# =====================================================================================


@dataclass(frozen=True)
class _HubErrors:
    error: type[BaseException]
    user: type[BaseException]
    internal: type[BaseException]
    rate_limited: type[BaseException]
    api: type[BaseException]
    transport: tuple[type[BaseException], ...]


@functools.cache
def _hub_errors() -> _HubErrors:
    # Always the REAL exception classes (an autospec'd module only has mocks of them).
    import requests
    from qai_hub.client import Error, InternalError, RateLimitedError, UserError
    from qai_hub.public_rest_api import APIException

    return _HubErrors(
        error=Error,
        user=UserError,
        internal=InternalError,
        rate_limited=RateLimitedError,
        api=APIException,
        transport=(
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            ConnectionError,
            TimeoutError,
        ),
    )


_TOKEN_ERROR_MARKERS = (
    "failed to load client configuration",
    "failed to load configuration file",
    "failed to authenticate",
    "please provide client configuration",
    "api token",
    "api authentication failure",
)

_Kind = Literal["token", "user", "transient", "rate_limited", "other"]


def _classify(exc: BaseException) -> _Kind:
    errors = _hub_errors()
    text = str(exc).lower()
    if isinstance(exc, errors.rate_limited):
        return "rate_limited"
    if isinstance(exc, errors.internal):
        return "transient"
    if isinstance(exc, errors.user):
        return "token" if any(m in text for m in _TOKEN_ERROR_MARKERS) else "user"
    if isinstance(exc, errors.api):
        code = getattr(exc, "status_code", None) or 0
        if code == 429:
            return "rate_limited"
        if code >= 500:
            return "transient"
        if code == 401:
            return "token"
        return "user"
    if isinstance(exc, errors.transport):
        return "transient"
    if isinstance(exc, errors.error):
        return "user"
    return "other"


def _is_connect_failure(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return True
    return isinstance(exc, _hub_errors().internal) and "could not connect" in str(exc).lower()


_BOX_CHARS = set("┌┐└┘─│| ")


def _plain(text: str) -> str:
    """Flatten qai_hub's boxed multi-line messages into one line."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or set(line) <= _BOX_CHARS:
            continue
        parts.append(line.strip("|│ ").strip())
    return re.sub(r"\s+", " ", " ".join(parts)).strip()


# =====================================================================================
# Model inputs
# =====================================================================================


def _external_locations(onnx_path: Path) -> set[str]:
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
        referenced = _external_locations(root / onnx_files[0])
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


def _model_kind(path: Path) -> ModelKind:
    if path.is_dir():
        return validate_model_dir(path).kind
    ext = path.suffix.lower()
    kind = _FILE_KINDS.get(ext)
    if kind is None:
        raise StageError(
            f"unsupported model file {path}: expected one of {', '.join(sorted(_FILE_KINDS))} "
            "or a model directory"
        )
    if kind == "pt2" and not zipfile.is_zipfile(path):
        raise StageError(
            f"{path} is not a torch.export archive (a .pt2 is a zip written by torch.export.save)"
        )
    if kind == "onnx":
        external = _external_locations(path)
        if external:
            raise StageError(
                f"ONNX model {path} keeps its weights in external file(s) "
                f"{', '.join(sorted(external))}, which qai_hub would not upload: put {path.name} "
                "and one <name>.data file alone in a directory and pass the directory"
            )
    return kind


def _check_dataset(
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


def _check_input_specs(
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


def _suggest(word: str, choices: Iterable[str], n: int = 6) -> list[str]:
    choices = sorted(set(choices))
    low = {c.lower(): c for c in choices}
    w = word.lower().strip()
    found = [c for c in choices if w and (w in c.lower() or c.lower() in w)]
    found += [low[m] for m in difflib.get_close_matches(w, list(low), n=n, cutoff=0.5)]
    return list(dict.fromkeys(found))[:n]


def _os_key(os_version: str) -> tuple[tuple[int, ...], str]:
    nums = tuple(int(x) for x in re.findall(r"\d+", os_version))
    return nums, os_version


# =====================================================================================
# Profile summary
# =====================================================================================


def summarize_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise a qai_hub profile dict the way Qualcomm's export scripts print it.

    ``profile`` is what ``InferenceJob.download_profile()`` returns: ``execution_summary`` holds
    times in microseconds and memory in bytes; ``execution_detail`` lists layers with a
    ``compute_unit`` of NPU / GPU / CPU. Peak memory is ``inference_memory_peak_range``
    (qai_hub_models/utils/printing.py), falling back to ``estimated_inference_peak_memory``.
    """
    summary = profile.get("execution_summary") or {}
    detail = profile.get("execution_detail") or []
    time_us = summary.get("estimated_inference_time")
    if time_us is None:
        raise StageError("the AI Hub profile has no estimated_inference_time")
    peak = summary.get("inference_memory_peak_range")
    if peak is None and summary.get("estimated_inference_peak_memory") is not None:
        peak = (summary["estimated_inference_peak_memory"],) * 2
    units = Counter(str(layer.get("compute_unit", "UNK")) for layer in detail)
    compute_units = {unit: units.pop(unit, 0) for unit in ("NPU", "GPU", "CPU")}
    compute_units.update(sorted(units.items()))

    def ms(key: str) -> float | None:
        value = summary.get(key)
        return None if value is None else round(value / 1000.0, 3)

    return {
        "estimated_inference_time_ms": round(time_us / 1000.0, 3),
        "peak_memory_range_mb": None if peak is None else [round(p / 1e6) for p in peak],
        "peak_memory_range_bytes": None if peak is None else [int(p) for p in peak],
        "compute_unit_ops": compute_units,
        "total_ops": sum(compute_units.values()),
        "first_load_time_ms": ms("first_load_time"),
        "warm_load_time_ms": ms("warm_load_time"),
    }


# =====================================================================================
# File helpers
# =====================================================================================


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _replace_into(src: Path, final: Path, scratch: Path) -> None:
    """Move ``src`` to ``final`` (same file system); an old ``final`` goes to ``scratch``."""
    if final.is_symlink() or final.is_file():
        if src.is_dir():
            final.unlink()
    elif final.is_dir():
        os.replace(final, scratch / f".previous-{final.name}")
    os.replace(src, final)


def _artifact_suffix(name: str) -> str:
    suffixes = PurePosixPath(name).suffixes
    if suffixes and suffixes[-1].lower() == ".zip":
        return "".join(suffixes[-2:]) if len(suffixes) >= 2 else ".zip"
    return suffixes[-1] if suffixes else ""


# =====================================================================================
# The client
# =====================================================================================


class AIHubClient:
    """Talks to Qualcomm AI Hub through a ``qai_hub``-like module object.

    Parameters
    ----------
    hub:
        The ``qai_hub`` module (imported lazily when ``None``) or a stand-in with the same API.
    sleep:
        Called with seconds to wait, for retries and polling (tests pass a recorder).
    max_attempts:
        Attempts per network call before a transient failure becomes a ``StageError``.
    """

    def __init__(
        self,
        hub: Any = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 5,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 60.0,
        rate_limit_min_s: float = 20.0,
        poll_interval_s: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._hub = hub
        self._sleep = sleep
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rate_limit_min_s = rate_limit_min_s
        self.poll_interval_s = poll_interval_s
        self.__config: _HubConfig | None = None
        self._network_checked = False

    def __repr__(self) -> str:
        return f"AIHubClient(hub={type(self._hub).__name__}, max_attempts={self.max_attempts})"

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a worker process: never carry the token along; a module is re-imported there.
        state = self.__dict__.copy()
        state["_AIHubClient__config"] = None
        if isinstance(self._hub, types.ModuleType):
            state["_hub"] = None
        return state

    @property
    def hub(self) -> Any:
        if self._hub is None:
            import qai_hub

            self._hub = qai_hub
        return self._hub

    # ---------------------------------------------------------------- token & calls

    def check_token(self) -> None:
        """Fail fast (no network) if no API token is configured."""
        self._config()

    def _config(self) -> _HubConfig:
        if self.__config is None:
            self.__config = _load_config()
        return self.__config

    def _redact(self, text: str) -> str:
        config = self.__config
        if config is not None and config.token and config.token in text:
            text = text.replace(config.token, _REDACTED)
        return text

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call qai_hub with bounded retries on transient errors; hub errors -> StageError."""
        if not self._network_checked:  # once per client: seconds, not minutes, when offline
            self._network_checked = True
            unreachable = self._unreachable()
            if unreachable:
                raise StageError(f"AI Hub {what} failed: {unreachable}")
        attempt = 0
        while True:
            attempt += 1
            captured = io.StringIO()
            try:
                with contextlib.redirect_stdout(captured):
                    return fn(*args, **kwargs)
            except Exception as exc:
                kind = _classify(exc)
                if kind == "other":
                    raise
                detail = self._redact(_plain(str(exc))) or type(exc).__name__
                if kind == "token":
                    reason = "AI Hub did not accept the configured API token (wrong or expired?)"
                    if "configuration" in detail.lower():
                        reason = "qai_hub could not load its configuration"
                    raise _TokenError(_token_message(reason)) from None
                if kind == "user":
                    raise _HubRejected(f"AI Hub rejected {what}: {detail}") from None
                unreachable = self._unreachable() if _is_connect_failure(exc) else None
                if unreachable:  # no network at all: retrying cannot help
                    raise StageError(f"AI Hub {what} failed: {unreachable}") from None
                if attempt >= self.max_attempts:
                    raise StageError(
                        f"AI Hub {what} failed after {attempt} attempts "
                        f"({type(exc).__name__}: {detail}). Check the network and the AI Hub "
                        "service status, then rerun the build; jobs already submitted keep "
                        "running on AI Hub."
                    ) from None
                delay = min(self.backoff_initial_s * 2 ** (attempt - 1), self.backoff_max_s)
                if kind == "rate_limited":
                    delay = max(delay, self.rate_limit_min_s)
                log.warning(
                    "AI Hub %s failed (%s: %s); retry %d/%d in %.0f s",
                    what,
                    type(exc).__name__,
                    detail,
                    attempt,
                    self.max_attempts - 1,
                    delay,
                )
                self._sleep(delay)
            finally:
                out = captured.getvalue().strip()
                if out:
                    log.debug("qai_hub output during %s: %s", what, self._redact(_plain(out)))

    def _unreachable(self) -> str | None:
        """Why AI Hub is unreachable, if it plainly is (its host does not resolve)."""
        from buildsys.backends.aihub_network import unreachable_reason

        try:
            config = self._config()
        except StageError:
            return None
        return unreachable_reason(config.api_url)

    def _job_url(self, job: Any, job_id: str) -> str:
        url = None
        with contextlib.suppress(Exception):
            url = job.url if job is not None else None
        if isinstance(url, str) and url:
            return self._redact(url)
        return f"{self._config().web_url.rstrip('/')}/jobs/{job_id}/"

    def _get_job(self, job_id: str) -> Any:
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise StageError(f"{job_id!r} is not an AI Hub job id (like 'jgdq2e8zp')")
        return self._call(f"fetching job {job_id}", self.hub.get_job, job_id)

    # ---------------------------------------------------------------- devices

    def _get_devices(self, **filters: Any) -> list[DeviceInfo]:
        shown = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "all"
        devices = self._call(f"listing devices ({shown})", self.hub.get_devices, **filters)
        return [DeviceInfo.from_hub(d) for d in devices]

    def list_devices(
        self,
        attributes: list[str] | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        now: float | None = None,
    ) -> list[DeviceInfo]:
        """Devices having all ``attributes`` (all devices if none), sorted by name then OS.

        With ``cache_path`` the answer is kept in that JSON file for a day (``now`` is the current
        time in seconds; ``time.time()`` by default).
        """
        attrs = sorted({a.strip() for a in attributes or [] if a.strip()})
        key = ",".join(attrs) or "*"
        now = time.time() if now is None else now
        cache = Path(cache_path) if cache_path is not None else None
        entries: dict[str, Any] = {}
        if cache is not None and cache.is_file():
            try:
                data = json.loads(cache.read_text(encoding="utf-8"))
                if data.get("version") == _DEVICE_CACHE_VERSION:
                    entries = dict(data.get("entries", {}))
                    entry = entries.get(key)
                    if entry is not None and 0 <= now - entry["fetched_at"] < DEVICE_CACHE_TTL_S:
                        return [DeviceInfo.from_dict(d) for d in entry["devices"]]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                entries = {}  # unreadable cache: refetch and overwrite
        self._config()
        devices = sorted(
            self._get_devices(attributes=attrs) if attrs else self._get_devices(),
            key=lambda d: (d.name, _os_key(d.os)),
        )
        if cache is not None:
            entries[key] = {"fetched_at": now, "devices": [d.to_dict() for d in devices]}
            payload = {"version": _DEVICE_CACHE_VERSION, "entries": entries}
            _atomic_write_text(cache, json.dumps(payload, indent=1, sort_keys=True) + "\n")
        return devices

    def resolve_device(self, spec: str) -> DeviceInfo:
        """Resolve a device name ("Samsung Galaxy S23") or comma-separated attribute filters
        ("chipset:qualcomm-snapdragon-8gen2,os:android") to exactly one device.

        Several OS versions of the one matching name are fine: the newest OS is picked.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise StageError("device spec is empty: give a device name or attribute filters")
        spec = spec.strip()
        tokens = [t.strip() for t in spec.split(",") if t.strip()]
        by_attributes = all(_ATTRIBUTE_RE.fullmatch(t) for t in tokens)
        self._config()
        try:
            if by_attributes:
                matches = self._get_devices(attributes=tokens)
            else:
                matches = self._get_devices(name=spec)
        except _HubRejected:
            matches = []  # e.g. an unknown attribute rejected by the server: explain below
        names = sorted({d.name for d in matches})
        if len(names) == 1:
            return max(matches, key=lambda d: _os_key(d.os))
        if len(names) > 1:
            raise StageError(
                f"device spec {spec!r} matches {len(names)} devices: {'; '.join(names)}. "
                "Give one device name, or add attribute filters (e.g. chipset:..., "
                "format:phone) to narrow it down"
            )
        everything = self._get_devices()
        if by_attributes:
            known = {a for d in everything for a in d.attributes}
            problems = []
            for token in tokens:
                if token not in known:
                    close = _suggest(token, known)
                    hint = f" (did you mean {', '.join(close)}?)" if close else ""
                    problems.append(f"no device has attribute {token!r}{hint}")
            if not problems:
                problems.append(f"no single device has all of {', '.join(tokens)}")
            raise StageError(f"device spec {spec!r}: " + "; ".join(problems))
        close = _suggest(spec, {d.name for d in everything})
        hint = f"; close matches: {'; '.join(close)}" if close else ""
        raise StageError(
            f"no AI Hub device is named {spec!r}{hint}. Device names must match exactly "
            "(`qai-hub list-devices` lists them)"
        )

    def _device(self, device: DeviceInfo | str) -> Any:
        info = device if isinstance(device, DeviceInfo) else self.resolve_device(device)
        return self.hub.Device(name=info.name, os=info.os)

    # ---------------------------------------------------------------- models & data

    @staticmethod
    def _check_model(model: str | os.PathLike[str], purpose: str) -> Path | str:
        """Local validation only: a model path (checked) or a job id (not yet looked up)."""
        allowed = _ALLOWED_KINDS[purpose]
        path = Path(model)
        if path.exists():
            kind = _model_kind(path)
            if kind not in allowed:
                raise StageError(
                    f"{path} is a {_KIND_TEXT[kind]}, which {purpose} jobs cannot take; "
                    f"{purpose} jobs accept: {', '.join(_KIND_TEXT[k] for k in allowed)}"
                )
            return path
        text = os.fspath(model)
        if not _JOB_ID_RE.fullmatch(text):
            raise StageError(
                f"model {text!r} not found: expected a path to a "
                f"{', '.join(_KIND_TEXT[k] for k in allowed)}, or the id of an AI Hub compile "
                "or quantize job (like 'jgdq2e8zp')"
            )
        return text

    def _hub_model(self, checked: Path | str, purpose: str) -> Any:
        """Upload a checked model path, or fetch the target model of a previous job."""
        if isinstance(checked, Path):
            return self._call(
                f"uploading model {checked.name}",
                self.hub.upload_model,
                str(checked),
                name=checked.name,
            )
        job = self._get_job(checked)
        get_target = getattr(job, "get_target_model", None)
        if get_target is None:
            raise StageError(
                f"AI Hub job {checked} ({self._job_url(job, checked)}) produces no model: pass "
                "a compile or quantize job id"
            )
        target = self._call(f"fetching the model of job {checked}", get_target)
        if target is None:
            raise StageError(
                f"AI Hub job {checked} has no target model (did it fail?): see "
                f"{self._job_url(job, checked)}"
            )
        model_type = getattr(getattr(target, "model_type", None), "name", None)
        if isinstance(model_type, str):
            if purpose == "quantize" and model_type != "ONNX":
                raise StageError(
                    f"job {checked} produced a {model_type} model; quantize jobs need ONNX"
                )
            if purpose == "link" and model_type != "QNN_DLC":
                raise StageError(
                    f"job {checked} produced a {model_type} model; link jobs take QNN DLC "
                    "models: compile with target runtime qnn_dlc"
                )
            if purpose == "inference" and model_type in _NEEDS_COMPILATION:
                raise StageError(
                    f"job {checked} produced a {model_type} model, which must be compiled "
                    "before inference: pass a compile job id"
                )
        return target

    def _upload_dataset(self, checked: dict[str, list[np.ndarray]], what: str, name: str | None):
        return self._call(f"uploading {what}", self.hub.upload_dataset, checked, name=name)

    @staticmethod
    def _job_id(job: Any) -> str:
        if isinstance(job, list):  # one Device in, one job out; be explicit if that changes
            if len(job) != 1:
                raise StageError(f"AI Hub created {len(job)} jobs where one was expected")
            job = job[0]
        return str(job.job_id)

    # ---------------------------------------------------------------- submissions

    def submit_compile(
        self,
        model_path: str | os.PathLike[str],
        device: DeviceInfo | str,
        target_runtime: str,
        options: str = "",
        input_specs: Mapping[str, tuple[Sequence[int], Any]] | None = None,
        calibration: Mapping[str, Sequence[np.ndarray]] | None = None,
        name: str | None = None,
    ) -> str:
        """Submit a compile job; returns its id without waiting.

        ``model_path``: a .pt2, a .onnx, an ONNX/AIMET ONNX directory, or a compile/quantize job
        id. ``options`` are extra AI Hub compile options (e.g. ``--quantize_io --compute_unit
        npu``); ``--target_runtime`` comes from ``target_runtime`` and may not be repeated.
        """
        if target_runtime not in TARGET_RUNTIMES:
            close = difflib.get_close_matches(str(target_runtime), TARGET_RUNTIMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StageError(
                f"unknown AI Hub target runtime {target_runtime!r}{hint}; "
                f"known: {', '.join(TARGET_RUNTIMES)}"
            )
        try:
            extra = shlex.split(options or "")
        except ValueError as exc:
            raise StageError(f"cannot parse AI Hub compile options {options!r}: {exc}") from None
        if any(t == "--target_runtime" or t.startswith("--target_runtime=") for t in extra):
            raise StageError(
                f"compile options {options!r} set --target_runtime; set target_runtime instead"
            )
        specs = _check_input_specs(input_specs)
        checked_model = self._check_model(model_path, "compile")
        data = None if calibration is None else _check_dataset(calibration, "calibration data")
        self._config()
        hub_device = self._device(device)
        model = self._hub_model(checked_model, "compile")
        dataset = None
        if data is not None:
            label = f"{name}-calibration" if name else None
            dataset = self._upload_dataset(data, "calibration data", label)
        job = self._call(
            "submitting a compile job",
            self.hub.submit_compile_job,
            model=model,
            device=hub_device,
            name=name,
            input_specs=specs,
            options=shlex.join(["--target_runtime", target_runtime, *extra]),
            calibration_data=dataset,
            retry=False,
        )
        return self._job_id(job)

    def submit_link(
        self,
        models: Sequence[str | os.PathLike[str]],
        device: DeviceInfo | str,
        name: str | None = None,
        options: str = "",
    ) -> str:
        """Submit a link job: one or more QNN DLC models (files or compile job ids) into one
        QNN context binary for ``device`` (graphs share their weights); returns its id."""
        if not models:
            raise StageError("a link job needs at least one QNN DLC model")
        checked = [self._check_model(m, "link") for m in models]
        self._config()
        hub_device = self._device(device)
        hub_models = [self._hub_model(c, "link") for c in checked]
        job = self._call(
            "submitting a link job",
            self.hub.submit_link_job,
            models=hub_models,
            device=hub_device,
            name=name,
            options=options.strip(),
        )
        return self._job_id(job)

    def submit_quantize(
        self,
        model_path: str | os.PathLike[str],
        calibration: Mapping[str, Sequence[np.ndarray]],
        weights_dtype: str = "int8",
        activations_dtype: str = "int8",
        name: str | None = None,
    ) -> str:
        """Submit a quantize job (ONNX in, QDQ ONNX out); returns its id without waiting."""
        if weights_dtype not in _WEIGHT_DTYPES:
            raise StageError(
                f"weights_dtype {weights_dtype!r} is not supported; use "
                f"{' or '.join(_WEIGHT_DTYPES)}"
            )
        if activations_dtype not in _ACTIVATION_DTYPES:
            raise StageError(
                f"activations_dtype {activations_dtype!r} is not supported; use "
                f"{' or '.join(_ACTIVATION_DTYPES)}"
            )
        checked_model = self._check_model(model_path, "quantize")
        data = _check_dataset(calibration, "calibration data")
        self._config()
        model = self._hub_model(checked_model, "quantize")
        label = f"{name}-calibration" if name else None
        dataset = self._upload_dataset(data, "calibration data", label)
        dtypes = self.hub.QuantizeDtype
        job = self._call(
            "submitting a quantize job",
            self.hub.submit_quantize_job,
            model=model,
            calibration_data=dataset,
            weights_dtype=getattr(dtypes, _WEIGHT_DTYPES[weights_dtype]),
            activations_dtype=getattr(dtypes, _ACTIVATION_DTYPES[activations_dtype]),
            name=name,
            options="",
        )
        return self._job_id(job)

    def submit_inference(
        self,
        model_or_job: str | os.PathLike[str],
        device: DeviceInfo | str,
        inputs: Mapping[str, Sequence[np.ndarray]] | None = None,
        profile: bool = False,
        name: str | None = None,
        options: str = "",
    ) -> str:
        """Submit an inference job (``profile=True`` also profiles it); returns its id.

        ``model_or_job``: a compile job id, or a compiled model file (.tflite, .bin, .dlc, .onnx,
        precompiled QNN ONNX directory). Without ``inputs`` AI Hub uses random data, which is only
        allowed when profiling.
        """
        if inputs is None and not profile:
            raise StageError(
                "an inference job without profiling needs inputs: pass inputs, or profile=True "
                "to run on random data"
            )
        checked_model = self._check_model(model_or_job, "inference")
        data = None if inputs is None else _check_dataset(inputs, "inputs")
        self._config()
        hub_device = self._device(device)
        model = self._hub_model(checked_model, "inference")
        dataset = None
        if data is not None:
            dataset = self._upload_dataset(data, "inputs", f"{name}-inputs" if name else None)
        job = self._call(
            "submitting an inference job",
            self.hub.submit_inference_job,
            model=model,
            device=hub_device,
            inputs=dataset,
            name=name,
            options=options.strip(),
            retry=False,
            profile=profile,
        )
        return self._job_id(job)

    # ---------------------------------------------------------------- waiting

    def wait_for(
        self,
        job_ids: Sequence[str],
        on_status: Callable[[str, str, str], None] | None = None,
        *,
        poll_interval_s: float | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, JobOutcome]:
        """Wait for all jobs together; returns an outcome per job (in the given order).

        ``on_status(job_id, status, url)`` is called whenever a job's status changes. A failed
        job is an outcome with its failure message and URL, never an exception. ``timeout_s``
        counts the polling sleeps; jobs still running then get status "TIMEOUT".
        """
        self._config()
        interval = self.poll_interval_s if poll_interval_s is None else poll_interval_s
        order = list(dict.fromkeys(job_ids))
        outcomes: dict[str, JobOutcome] = {}
        jobs: dict[str, Any] = {}
        last: dict[str, str] = {}

        def report(job_id: str, status: str, url: str) -> None:
            if last.get(job_id) != status:
                last[job_id] = status
                if on_status is not None:
                    on_status(job_id, status, url)

        for job_id in order:
            try:
                jobs[job_id] = self._get_job(job_id)
            except _TokenError:
                raise
            except StageError as exc:
                url = self._job_url(None, job_id) if _JOB_ID_RE.fullmatch(str(job_id)) else ""
                outcomes[job_id] = JobOutcome(job_id, "ERROR", url, str(exc))
                report(job_id, "ERROR", url)
        waited = 0.0
        while True:
            for job_id, job in jobs.items():
                if job_id in outcomes:
                    continue
                url = self._job_url(job, job_id)
                try:
                    status = self._call(f"polling job {job_id}", job.get_status)
                except _TokenError:
                    raise
                except StageError as exc:
                    outcomes[job_id] = JobOutcome(job_id, "ERROR", url, str(exc))
                    report(job_id, "ERROR", url)
                    continue
                code = str(status.code)
                report(job_id, code, url)
                if status.finished:
                    message = self._redact(_plain(status.message or ""))
                    if status.failure and not message:
                        message = "the job failed without a message"
                    outcomes[job_id] = JobOutcome(job_id, code, url, message)
            pending = [j for j in order if j not in outcomes]
            if not pending:
                break
            if timeout_s is not None and waited >= timeout_s:
                for job_id in pending:
                    url = self._job_url(jobs[job_id], job_id)
                    outcomes[job_id] = JobOutcome(
                        job_id,
                        "TIMEOUT",
                        url,
                        f"still {last.get(job_id, 'pending')} after waiting {waited:.0f} s",
                    )
                break
            self._sleep(interval)
            waited += interval
        return {job_id: outcomes[job_id] for job_id in order}

    # ---------------------------------------------------------------- downloads

    def _finished_job(self, job_id: str, purpose: str) -> Any:
        self._config()
        job = self._get_job(job_id)
        status = self._call(f"checking job {job_id}", job.get_status)
        url = self._job_url(job, job_id)
        if status.failure:
            message = self._redact(_plain(status.message or "")) or "no message"
            raise StageError(f"AI Hub job {job_id} failed ({message}); see {url}")
        if not status.success:
            raise StageError(
                f"AI Hub job {job_id} is still {status.code}: wait for it (wait_for) before "
                f"{purpose}; see {url}"
            )
        return job

    def _download_target(self, job_id: str, dest_dir: str | os.PathLike[str], stem: str) -> Path:
        if not stem or "/" in stem or stem.startswith("."):
            raise StageError(f"invalid artifact file stem {stem!r}")
        job = self._finished_job(job_id, "downloading its model")
        download = getattr(job, "download_target_model", None)
        if download is None:
            raise StageError(
                f"AI Hub job {job_id} is not a compile or quantize job; it has no model to "
                f"download ({self._job_url(job, job_id)})"
            )
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".aihub-download-") as tmp_name:
            scratch = Path(tmp_name)

            def attempt() -> str | None:
                # a fresh directory per attempt: a failed try leaves nothing we could pick up
                return download(tempfile.mkdtemp(dir=scratch, prefix="try-"))

            got = self._call(f"downloading the model of job {job_id}", attempt)
            if got is None or not Path(got).exists():
                raise StageError(
                    f"AI Hub job {job_id} has no model to download; see "
                    f"{self._job_url(job, job_id)}"
                )
            src = Path(got)
            if src.is_file() and src.name.lower().endswith(".zip"):
                extracted = scratch / "extracted"
                with zipfile.ZipFile(src) as archive:
                    tops = {PurePosixPath(n).parts[0] for n in archive.namelist() if n.strip("/")}
                    archive.extractall(extracted)
                if len(tops) == 1 and (extracted / next(iter(tops))).is_dir():
                    src = extracted / next(iter(tops))
                else:
                    src = extracted
                final = dest / stem
            elif src.is_dir():
                final = dest / stem
            else:
                final = dest / f"{stem}{_artifact_suffix(src.name)}"
            _replace_into(src, final, scratch)
        return final

    def download_compiled(
        self, job_id: str, dest_dir: str | os.PathLike[str], stem: str = "model"
    ) -> Path:
        """Download a compile job's target model to ``dest_dir/<stem><ext>``.

        Zipped directory models (e.g. precompiled QNN ONNX) are extracted to ``dest_dir/<stem>/``.
        """
        return self._download_target(job_id, dest_dir, stem)

    def download_quantized(
        self, job_id: str, dest_dir: str | os.PathLike[str], stem: str = "model"
    ) -> Path:
        """Download a quantize job's QDQ ONNX model (``dest_dir/<stem>.onnx`` or a directory)."""
        path = self._download_target(job_id, dest_dir, stem)
        is_onnx = path.suffix == ".onnx" if path.is_file() else any(path.glob("*.onnx"))
        if not is_onnx:
            raise StageError(
                f"AI Hub job {job_id} produced {path.name}, not an ONNX model: "
                "is it a quantize job?"
            )
        return path

    def download_profile(self, job_id: str) -> dict[str, Any]:
        """Summary of an inference job run with ``profile=True`` (see ``summarize_profile``)."""
        job = self._finished_job(job_id, "downloading its profile")
        fetch = getattr(job, "download_profile", None)
        if fetch is None:
            raise StageError(f"AI Hub job {job_id} is not an inference job: it has no profile")
        profile = self._call(f"downloading the profile of job {job_id}", fetch)
        if not profile:
            raise StageError(
                f"AI Hub job {job_id} has no profile: submit the inference job with profile=True"
            )
        return summarize_profile(profile)

    def download_outputs(self, job_id: str) -> dict[str, list[np.ndarray]]:
        """Output tensors of an inference job: output name -> one array per input sample."""
        job = self._finished_job(job_id, "downloading its outputs")
        fetch = getattr(job, "download_output_data", None)
        if fetch is None:
            raise StageError(f"AI Hub job {job_id} is not an inference job: it has no outputs")
        data = self._call(f"downloading the outputs of job {job_id}", fetch)
        if data is None:
            raise StageError(
                f"AI Hub job {job_id} has no output data: it ran without inputs (random data); "
                "submit it with inputs"
            )
        return {str(k): [np.asarray(a) for a in v] for k, v in data.items()}
