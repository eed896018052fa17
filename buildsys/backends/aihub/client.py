"""The AI Hub client: every call to qai_hub goes through it, with bounded retries on transient
failures, the token redacted from everything passed on, and one path to submit a job.

It holds the real ``qai_hub`` (0.56) module — imported lazily: it pulls in requests, h5py,
botocore — or a stand-in with the same API (tests hand in ``create_autospec(qai_hub)``).
Submitting returns the job id at once; ``wait_for`` polls all jobs together and reports a
failed job as an outcome instead of raising; downloads land in a temporary directory inside
the destination and are moved into place.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import shlex
import tempfile
import time
import types
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np

from buildsys.backends.aihub.config import (
    REDACTED,
    HubConfig,
    TokenError,
    load_config,
    token_message,
)
from buildsys.backends.aihub.devices import (
    ATTRIBUTE_RE,
    DeviceInfo,
    cache_devices,
    cached_devices,
    os_key,
    suggest,
)
from buildsys.backends.aihub.errors import HubRejected, classify, is_connect_failure, plain
from buildsys.backends.aihub.files import artifact_suffix, replace_into
from buildsys.backends.aihub.jobs import JOB_ID_RE, JobOutcome
from buildsys.backends.aihub.models import (
    NEEDS_COMPILATION,
    check_dataset,
    check_input_specs,
    check_model,
)
from buildsys.backends.aihub.profile import summarize_profile
from buildsys.errors import StageError

# The package's logger: the AI Hub stages write its messages (retries, back-off) to the log.
log = logging.getLogger("buildsys.backends.aihub")

T = TypeVar("T")

TARGET_RUNTIMES = ("tflite", "qnn_context_binary", "qnn_dlc", "onnx", "precompiled_qnn_onnx")
WEIGHT_DTYPES = {"int8": "INT8", "int4": "INT4"}
ACTIVATION_DTYPES = {"int8": "INT8", "int16": "INT16"}
Samples = Mapping[str, Sequence[np.ndarray]]


@dataclass(frozen=True)
class _Upload:
    """A dataset to upload for a job argument, checked locally already."""

    data: dict[str, list[np.ndarray]] | None
    what: str
    name: str | None


@dataclass(frozen=True)
class _Checked:
    """A job's models and datasets after the local checks: nothing has touched the network."""

    purpose: str
    models: list[Path | str]
    uploads: dict[str, _Upload]


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
        self.__config: HubConfig | None = None
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

    def _config(self) -> HubConfig:
        if self.__config is None:
            self.__config = load_config()
        return self.__config

    def _redact(self, text: str) -> str:
        config = self.__config
        if config is not None and config.token and config.token in text:
            text = text.replace(config.token, REDACTED)
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
                kind = classify(exc)
                if kind == "other":
                    raise
                detail = self._redact(plain(str(exc))) or type(exc).__name__
                if kind == "token":
                    reason = "AI Hub did not accept the configured API token (wrong or expired?)"
                    if "configuration" in detail.lower():
                        reason = "qai_hub could not load its configuration"
                    raise TokenError(token_message(reason)) from None
                if kind == "user":
                    raise HubRejected(f"AI Hub rejected {what}: {detail}") from None
                unreachable = self._unreachable() if is_connect_failure(exc) else None
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
                    log.debug("qai_hub output during %s: %s", what, self._redact(plain(out)))

    def _unreachable(self) -> str | None:
        """Why AI Hub is unreachable, if it plainly is (its host does not resolve)."""
        from buildsys.backends.aihub.network import unreachable_reason

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
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
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
        cached, entries = cached_devices(cache, key, now)
        if cached is not None:
            return cached
        self._config()
        devices = sorted(
            self._get_devices(attributes=attrs) if attrs else self._get_devices(),
            key=lambda d: (d.name, os_key(d.os)),
        )
        if cache is not None:
            cache_devices(cache, entries, key, now, devices)
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
        by_attributes = all(ATTRIBUTE_RE.fullmatch(t) for t in tokens)
        self._config()
        try:
            if by_attributes:
                matches = self._get_devices(attributes=tokens)
            else:
                matches = self._get_devices(name=spec)
        except HubRejected:
            matches = []  # e.g. an unknown attribute rejected by the server: explain below
        names = sorted({d.name for d in matches})
        if len(names) == 1:
            return max(matches, key=lambda d: os_key(d.os))
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
                    close = suggest(token, known)
                    hint = f" (did you mean {', '.join(close)}?)" if close else ""
                    problems.append(f"no device has attribute {token!r}{hint}")
            if not problems:
                problems.append(f"no single device has all of {', '.join(tokens)}")
            raise StageError(f"device spec {spec!r}: " + "; ".join(problems))
        close = suggest(spec, {d.name for d in everything})
        hint = f"; close matches: {'; '.join(close)}" if close else ""
        raise StageError(
            f"no AI Hub device is named {spec!r}{hint}. Device names must match exactly "
            "(`qai-hub list-devices` lists them)"
        )

    def _device(self, device: DeviceInfo | str) -> Any:
        info = device if isinstance(device, DeviceInfo) else self.resolve_device(device)
        return self.hub.Device(name=info.name, os=info.os)

    # ---------------------------------------------------------------- models & data

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
            if purpose == "inference" and model_type in NEEDS_COMPILATION:
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

    def _check(self, purpose: str, models: Sequence[str | os.PathLike[str]],
               uploads: Mapping[str, tuple[Samples | None, str, str | None]] | None = None,
               ) -> _Checked:
        """Everything that can be checked without the network: models (paths or job ids) and
        datasets (job argument -> (samples or None, what they are, upload name))."""
        checked = [check_model(m, purpose) for m in models]
        datasets = {arg: _Upload(None if data is None else check_dataset(data, what), what, name)
                    for arg, (data, what, name) in (uploads or {}).items()}
        return _Checked(purpose, checked, datasets)

    def _submit(self, job: _Checked, submit: str, device: DeviceInfo | str | None = None,
                **arguments: Any) -> str:
        """The one submit path: resolve the device, upload the models (or fetch those of earlier
        jobs) and the datasets, call qai_hub's `submit` function; returns the job id at once.
        A link job takes its models as `models`, every other job its one model as `model`."""
        self._config()
        if device is not None:
            arguments["device"] = self._device(device)
        models = [self._hub_model(m, job.purpose) for m in job.models]
        if job.purpose == "link":
            arguments["models"] = models
        else:
            (arguments["model"],) = models
        for arg, upload in job.uploads.items():
            arguments[arg] = (None if upload.data is None
                              else self._upload_dataset(upload.data, upload.what, upload.name))
        article = "an" if job.purpose[0] in "aeiou" else "a"
        created = self._call(f"submitting {article} {job.purpose} job",
                             getattr(self.hub, submit), **arguments)
        return self._job_id(created)

    def submit_compile(
        self,
        model_path: str | os.PathLike[str],
        device: DeviceInfo | str,
        target_runtime: str,
        options: str = "",
        input_specs: Mapping[str, tuple[Sequence[int], Any]] | None = None,
        calibration: Samples | None = None,
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
        specs = check_input_specs(input_specs)
        label = f"{name}-calibration" if name else None
        job = self._check("compile", [model_path],
                          {"calibration_data": (calibration, "calibration data", label)})
        return self._submit(job, "submit_compile_job", device, name=name, input_specs=specs,
                            options=shlex.join(["--target_runtime", target_runtime, *extra]),
                            retry=False)

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
        job = self._check("link", models)
        return self._submit(job, "submit_link_job", device, name=name, options=options.strip())

    def submit_quantize(
        self,
        model_path: str | os.PathLike[str],
        calibration: Samples,
        weights_dtype: str = "int8",
        activations_dtype: str = "int8",
        name: str | None = None,
    ) -> str:
        """Submit a quantize job (ONNX in, QDQ ONNX out); returns its id without waiting."""
        if weights_dtype not in WEIGHT_DTYPES:
            raise StageError(
                f"weights_dtype {weights_dtype!r} is not supported; use "
                f"{' or '.join(WEIGHT_DTYPES)}"
            )
        if activations_dtype not in ACTIVATION_DTYPES:
            raise StageError(
                f"activations_dtype {activations_dtype!r} is not supported; use "
                f"{' or '.join(ACTIVATION_DTYPES)}"
            )
        label = f"{name}-calibration" if name else None
        job = self._check("quantize", [model_path],
                          {"calibration_data": (calibration, "calibration data", label)})
        self._config()  # before qai_hub is imported for its dtype names
        dtypes = self.hub.QuantizeDtype
        return self._submit(job, "submit_quantize_job", name=name, options="",
                            weights_dtype=getattr(dtypes, WEIGHT_DTYPES[weights_dtype]),
                            activations_dtype=getattr(dtypes,
                                                      ACTIVATION_DTYPES[activations_dtype]))

    def submit_inference(
        self,
        model_or_job: str | os.PathLike[str],
        device: DeviceInfo | str,
        inputs: Samples | None = None,
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
        label = f"{name}-inputs" if name else None
        job = self._check("inference", [model_or_job], {"inputs": (inputs, "inputs", label)})
        return self._submit(job, "submit_inference_job", device, name=name,
                            options=options.strip(), retry=False, profile=profile)

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
            except TokenError:
                raise
            except StageError as exc:
                url = self._job_url(None, job_id) if JOB_ID_RE.fullmatch(str(job_id)) else ""
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
                except TokenError:
                    raise
                except StageError as exc:
                    outcomes[job_id] = JobOutcome(job_id, "ERROR", url, str(exc))
                    report(job_id, "ERROR", url)
                    continue
                code = str(status.code)
                report(job_id, code, url)
                if status.finished:
                    message = self._redact(plain(status.message or ""))
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
            message = self._redact(plain(status.message or "")) or "no message"
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
                final = dest / f"{stem}{artifact_suffix(src.name)}"
            replace_into(src, final, scratch)
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
