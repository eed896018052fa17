"""Stages that run on real devices through Qualcomm AI Hub: compile, quantize, link, infer
(+ profile).

Each stage submits one AI Hub job through `buildsys.backends.aihub.AIHubClient`, records the job
id under its stage key the moment it is submitted (`ctx.remember("job", id)`), waits for it and
downloads the result into its output directory. The executor then stores those files like any
stage output, keyed by the stage key: an unchanged stage is a cache hit and never resubmits.

Interrupted builds resume: a re-run with the same stage key finds the job id (`ctx.recall`) and
waits for that same job instead of submitting a new one. A job that FAILED fails the stage with
AI Hub's message and the job's link, and is forgotten, so the next build submits a fresh job.

Concurrency: every AI Hub stage is one executor worker that submits and then waits. They are
remote stages, outside the local `-j` budget: every independent job of a build (e.g. the compile
jobs of every variant) is in flight on AI Hub at once. Dependent jobs (compile → link →
inference) are necessarily one after the other.

Outputs
  aihub_compile   job.json ({job_id, url, device, runtime, model}) + the compiled model
                  (model.tflite, model.bin, model.dlc, model.onnx, or a model/ directory)
  aihub_quantize  model.onnx (QDQ ONNX)
  aihub_link      job.json (as aihub_compile's) + model.bin: a QNN DLC compile linked into a
                  context binary on the device
  aihub_infer     outputs.npz (same samples format as `infer`) + infer.json (the profile
                  summary, as Qualcomm's export scripts print it, and "where")

Never in any output, message or log: the API token (the backend redacts everything it passes
on; this module only handles job ids, URLs and device names).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from buildsys.errors import StageError
from buildsys.stages._common import (
    PYTHON_TOOLS,
    load_samples,
    read_json,
    save_samples,
    write_json,
)
from buildsys.stages.base import Stage, StageContext

if TYPE_CHECKING:
    from buildsys.backends.aihub import AIHubClient, DeviceInfo

TOOLS = (*PYTHON_TOOLS, "qai-hub")
POLL_ENV = "MODELBUILD_AIHUB_POLL_S"  # seconds between status polls (default 10)
WAIT_ENV = "MODELBUILD_AIHUB_WAIT_S"  # give up waiting after this long (job keeps running)
JOB = "job"
DEVICE = "device"


# --- shared plumbing ---------------------------------------------------------------------


def new_client() -> AIHubClient:
    """The AI Hub client the stages use (tests patch `AIHubClient.hub` with an autospec)."""
    from buildsys.backends.aihub import AIHubClient

    poll = _env_seconds(POLL_ENV)
    return AIHubClient(poll_interval_s=10.0 if poll is None else poll)


def _env_seconds(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise StageError(f"${name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise StageError(f"${name} must not be negative, got {raw!r}")
    return value


def _attributes(spec: dict[str, Any]) -> list[str]:
    attributes = [str(a).strip() for a in spec.get("attributes") or [] if str(a).strip()]
    chipset = str(spec.get("chipset") or "").strip()
    if chipset:
        attributes.append(chipset if chipset.startswith("chipset:") else f"chipset:{chipset}")
    return list(dict.fromkeys(attributes))


def resolve_device(client: AIHubClient, spec: dict[str, Any]) -> DeviceInfo:
    """A recipe device (`name`, and/or `attributes` / `chipset`) → exactly one AI Hub device.

    By name: that device (newest OS), which must also have any attributes given. By attributes
    alone: the one device having all of them. Ambiguous or unknown: a StageError listing the
    candidates or close matches (from the backend)."""
    attributes = _attributes(spec)
    name = str(spec.get("name") or "").strip()
    if not name and not attributes:
        raise StageError("an aihub device needs a name (e.g. \"Samsung Galaxy S23\") or "
                         "attributes (e.g. chipset:qualcomm-snapdragon-8gen2)")
    if not name:
        return client.resolve_device(",".join(attributes))
    info = client.resolve_device(name)
    missing = [a for a in attributes if a not in info.attributes]
    if missing:
        raise StageError(
            f"AI Hub device {info.name!r} does not have {', '.join(missing)} (it has "
            f"{', '.join(info.attributes)}): fix the device's attributes/chipset in the recipe, "
            "or drop the name and select by attributes")
    return info


def _remembered_device(ctx: StageContext, client: AIHubClient) -> DeviceInfo:
    from buildsys.backends.aihub import DeviceInfo

    known = ctx.recall(DEVICE)
    if known:
        return DeviceInfo.from_dict(known)
    info = resolve_device(client, ctx.params["device"])
    ctx.remember(DEVICE, info.to_dict())
    return info


def run_job(ctx: StageContext, client: AIHubClient, what: str,
            submit: Callable[[], str], where: str = "") -> tuple[str, str]:
    """Submit (or resume) this stage's job and wait for it; returns (job id, url).

    Each status change is logged and shown by the progress display (job id, device, status,
    link).

    The id is remembered under the stage key before waiting, so an interrupted build, run
    again, waits for the same job. A failed job raises with its message and link and is
    forgotten (the next build submits a new one); a job still running when the wait limit is
    reached raises but stays remembered."""
    job_id = ctx.recall(JOB)
    if job_id:
        ctx.log(f"AI Hub {what} job {job_id} was submitted by an earlier build: waiting for it")
    else:
        job_id = submit()
        ctx.remember(JOB, job_id)
        ctx.log(f"submitted AI Hub {what} job {job_id}")

    on = f" on {where}" if where else ""
    ctx.status(f"AI Hub {what} job {job_id}{on}: SUBMITTED")

    def on_status(job: str, status: str, url: str) -> None:
        ctx.log(f"AI Hub {what} job {job}{on}: {status} ({url})")
        ctx.status(f"AI Hub {what} job {job}{on}: {status} {url}")

    outcome = client.wait_for([job_id], on_status, timeout_s=_env_seconds(WAIT_ENV))[job_id]
    if outcome.success:
        return job_id, outcome.url
    if outcome.status == "TIMEOUT":
        raise StageError(
            f"AI Hub {what} job {job_id} is {outcome.message}; it keeps running on AI Hub. Run "
            f"the build again to wait for the same job. See {outcome.url}")
    if outcome.status == "ERROR" and "rejected" not in outcome.message:
        # Could not reach AI Hub (after the backend's retries): the job may be fine.
        raise StageError(
            f"AI Hub {what} job {job_id} could not be checked: {outcome.message}. Run the build "
            f"again to wait for the same job. See {outcome.url}")
    ctx.remember(JOB, None)
    raise StageError(f"AI Hub {what} job {job_id} failed: {outcome.message or outcome.status}. "
                     f"See {outcome.url} (the next build submits a new job)")


class AIHubStage(Stage):
    """Runs `_run` with the backend's messages (retries, back-off) written to the stage log."""

    tools: ClassVar[tuple[str, ...]] = TOOLS
    remote: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: dict[str, Any]) -> dict[str, float]:
        return {"aihub": 1}  # on a cluster: a worker with the token and the network

    @classmethod
    def unavailable(cls) -> str | None:
        """No API token, or AI Hub's host does not resolve: a fraction of a second, one name
        lookup. The message never contains the token (the backend never quotes its config)."""
        from buildsys.backends.aihub import check_reachable, check_token

        try:
            check_token()
            check_reachable()
        except StageError as exc:
            return str(exc)
        return None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        with _backend_messages_in_log():
            return self._run(ctx)

    def _run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError


@contextlib.contextmanager
def _backend_messages_in_log() -> Iterator[None]:
    """Whatever logging is configured (none in a worker), the backend's warnings land in the
    stage log, i.e. this stage's stderr. They are redacted by the backend already."""
    logger = logging.getLogger("buildsys.backends.aihub")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _job_name(ctx: StageContext) -> str:
    return f"modelbuild {ctx.stage_id}"


def _samples_by_input(samples: list[dict[str, Any]], io: dict[str, Any],
                      what: str) -> dict[str, list[Any]]:
    """List of {input: array} samples → {input: [array per sample]} as AI Hub datasets take."""
    import numpy as np

    if not samples:
        raise StageError(f"the {what} split is empty: AI Hub needs at least one sample")
    names = list(io["inputs"])
    data: dict[str, list[Any]] = {name: [] for name in names}
    for index, sample in enumerate(samples):
        for name in names:
            if name not in sample:
                raise StageError(f"{what} sample {index} has no input {name!r} "
                                 f"(it has {', '.join(sorted(sample))})")
            dtype = io["inputs"][name].get("dtype", "float32")
            data[name].append(np.ascontiguousarray(sample[name], dtype=dtype))
    return data


# --- compile -------------------------------------------------------------------------------


class AIHubCompileStage(AIHubStage):
    kind: ClassVar[str] = "aihub_compile"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("job.json",)

    def _run(self, ctx: StageContext) -> dict[str, Any]:
        client = new_client()
        client.check_token()
        params = ctx.params
        runtime = params["runtime"]
        model = _model_to_compile(ctx)
        device = _remembered_device(ctx, client)
        specs = {name: (tuple(spec["shape"]), spec.get("dtype", "float32"))
                 for name, spec in params["io"]["inputs"].items()}

        def submit() -> str:
            return client.submit_compile(model, device, runtime, options=params.get("options")
                                         or "", input_specs=specs, name=_job_name(ctx))

        job_id, url = run_job(ctx, client, "compile", submit, device.name)
        download = ctx.work_dir / "download"
        produced = client.download_compiled(job_id, download, stem="model")
        files = _place_outputs(produced, ctx.out_dir)
        summary = {"job_id": job_id, "url": url, "runtime": runtime,
                   "device": {"name": device.name, "os": device.os, "chipset": device.chipset},
                   "model": files, "options": params.get("options") or ""}
        write_json(ctx.output("job.json"), summary)
        ctx.log(f"compiled for {device.name} ({runtime}): {', '.join(files)}")
        return {"job_id": job_id, "url": url, "device": device.name, "runtime": runtime,
                "where": f"{device.name} (AI Hub)"}


class AIHubLinkStage(AIHubStage):
    """A compile job's QNN DLC linked into a QNN context binary by an AI Hub link job: the
    target `link: true` path. Downstream stages see a job.json like a compile's."""

    kind: ClassVar[str] = "aihub_link"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("job.json", "model.bin")

    def _run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.aihub import DeviceInfo

        compiled = read_json(ctx.input("compiled"))
        client = new_client()
        client.check_token()
        # The device the DLC was compiled for (the same recipe device): no second lookup.
        device = DeviceInfo.from_dict(compiled["device"])
        options = ctx.params.get("options") or ""

        def submit() -> str:
            return client.submit_link([compiled["job_id"]], device, name=_job_name(ctx),
                                      options=options)

        job_id, url = run_job(ctx, client, "link", submit, device.name)
        produced = client.download_compiled(job_id, ctx.work_dir / "download", stem="model")
        files = _place_outputs(produced, ctx.out_dir)
        write_json(ctx.output("job.json"), {
            "job_id": job_id, "url": url, "runtime": "qnn_context_binary",
            "device": compiled["device"], "model": files, "options": options,
            "linked": [compiled["job_id"]]})
        ctx.log(f"linked compile job {compiled['job_id']} into a context binary for "
                f"{device.name}: {', '.join(files)}")
        return {"job_id": job_id, "url": url, "device": device.name,
                "runtime": "qnn_context_binary", "linked": [compiled["job_id"]],
                "where": f"{device.name} (AI Hub)"}


def _model_to_compile(ctx: StageContext) -> Path:
    """What the compile job uploads: an AIMET ONNX directory (inputs `aimet/<file>`), else the
    `model` input (the QDQ or float ONNX the pipeline gives, or a .pt2), else a captured
    torch program (any `.pt2` input, e.g. the capture stage's `model.pt2`)."""
    from buildsys.backends.aihub import validate_aimet_dir

    aimet = {name.partition("/")[2]: p for name, p in ctx.inputs.items()
             if name.startswith("aimet/")}
    if aimet:
        directory = ctx.work_dir / "aimet_model"
        directory.mkdir(parents=True, exist_ok=True)
        for name, path in aimet.items():
            shutil.copyfile(path, directory / Path(name).name)
        return validate_aimet_dir(directory).path
    if "model" in ctx.inputs:
        return ctx.inputs["model"]
    programs = [p for _, p in sorted(ctx.inputs.items()) if p.suffix == ".pt2"]
    if len(programs) == 1:
        return programs[0]
    raise StageError(f"{ctx.stage_id}: no model to compile: give a `model` input (ONNX or "
                     ".pt2), one .pt2 program, or an AIMET ONNX directory (`aimet/...`)")


def _place_outputs(produced: Path, out_dir: Path) -> list[str]:
    """Move a downloaded model (file or directory) into the output directory; its names."""
    if produced.is_dir():
        dest = out_dir / produced.name
        shutil.move(str(produced), dest)
        return sorted(p.relative_to(out_dir).as_posix() for p in dest.rglob("*") if p.is_file())
    dest = out_dir / produced.name
    shutil.move(str(produced), dest)
    return [dest.name]


# --- quantize ------------------------------------------------------------------------------


class AIHubQuantizeStage(AIHubStage):
    kind: ClassVar[str] = "aihub_quantize"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("model.onnx",)

    def _run(self, ctx: StageContext) -> dict[str, Any]:
        scheme = ctx.params["scheme"]
        samples = load_samples(ctx.input("calibration"))
        if scheme.get("samples"):
            samples = samples[: scheme["samples"]]
        calibration = _samples_by_input(samples, ctx.params["io"], "calibration")
        client = new_client()
        client.check_token()
        model = ctx.input("model")

        def submit() -> str:
            return client.submit_quantize(model, calibration, weights_dtype=scheme["weights"],
                                          activations_dtype=scheme["activations"],
                                          name=_job_name(ctx))

        job_id, url = run_job(ctx, client, "quantize", submit)
        produced = client.download_quantized(job_id, ctx.work_dir / "download", stem="model")
        shutil.move(str(_single_onnx(produced, job_id)), ctx.output("model.onnx"))
        return {"engine": "aihub", "job_id": job_id, "url": url,
                "calibration_samples": len(samples), "weights": scheme["weights"],
                "activations": scheme["activations"]}


def _single_onnx(produced: Path, job_id: str) -> Path:
    if produced.is_file():
        return produced
    files = sorted(p for p in produced.rglob("*") if p.is_file())
    if len(files) == 1 and files[0].suffix == ".onnx":
        return files[0]
    listing = ", ".join(p.name for p in files)
    raise StageError(
        f"AI Hub quantize job {job_id} returned a model directory ({listing}); models with "
        "external weight files are not supported by this stage yet")


# --- inference + profile -------------------------------------------------------------------


class AIHubInferStage(AIHubStage):
    kind: ClassVar[str] = "aihub_infer"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("outputs.npz", "infer.json")
    measurement_files: ClassVar[tuple[str, ...]] = ("infer.json",)

    def _run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.aihub import DeviceInfo

        compiled = read_json(ctx.input("compiled"))
        io = ctx.params["io"]
        samples = load_samples(ctx.input("samples"))
        inputs = _samples_by_input(samples, io, "validation")
        client = new_client()
        client.check_token()
        # The device the model was compiled for (the same recipe device): no second lookup.
        device = DeviceInfo.from_dict(compiled["device"])

        def submit() -> str:
            return client.submit_inference(compiled["job_id"], device, inputs, profile=True,
                                           name=_job_name(ctx))

        job_id, url = run_job(ctx, client, "inference", submit, device.name)
        profile = client.download_profile(job_id)
        outputs = _named_outputs(client.download_outputs(job_id), io["outputs"], len(samples),
                                 job_id)
        save_samples(outputs, ctx.output("outputs.npz"))
        where = f"{device.name} (AI Hub)"
        summary = {"where": where, "device": device.name, "os": device.os,
                   "chipset": device.chipset, "runtime": ctx.params["runtime"],
                   "job_id": job_id, "url": url, "compile_job_id": compiled["job_id"],
                   "samples": len(samples), **profile}
        write_json(ctx.output("infer.json"), summary)
        ctx.log(f"{where}: {profile['estimated_inference_time_ms']} ms estimated inference time, "
                f"ops per compute unit {profile['compute_unit_ops']}")
        return summary


def _named_outputs(data: dict[str, list[Any]], names: list[str], count: int,
                   job_id: str) -> list[dict[str, Any]]:
    """AI Hub's {output: [array per sample]} → [{recipe output name: array}] per sample.

    Outputs are matched by name when AI Hub kept the recipe's names, else in order (a compiled
    model may rename its outputs, e.g. TFLite)."""
    if set(names) <= set(data):
        pairs = [(name, data[name]) for name in names]
    elif len(data) == len(names):
        pairs = list(zip(names, data.values(), strict=True))
    else:
        raise StageError(
            f"AI Hub inference job {job_id} returned outputs {', '.join(data)}; the recipe "
            f"declares {', '.join(names)}: declare the model's outputs under models.<name>."
            "outputs")
    for name, arrays in pairs:
        if len(arrays) != count:
            raise StageError(f"AI Hub inference job {job_id} returned {len(arrays)} results for "
                             f"output {name!r}, expected one per sample ({count})")
    return [{name: arrays[i] for name, arrays in pairs} for i in range(count)]
