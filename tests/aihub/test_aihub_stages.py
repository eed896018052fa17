"""AI Hub stages end to end: the real planner, executor (in-process), store and stage code,
against `create_autospec(qai_hub)` standing in for the service.

The fake service behaves like a device: a compile job keeps the ONNX it was given, an inference
job runs that ONNX with onnxruntime on the uploaded inputs, so validation against the fp32
reference is real. The token check runs for real against a temporary HOME.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import qai_hub
from qai_hub import public_api_pb2 as pb
from qai_hub.client import InternalError, UserError, _profile_pb_to_python_dict

import buildsys.stages.aihub as aihub_stages
from buildsys.backends.aihub import AIHubClient
from buildsys.build import BuildOptions, run_build
from buildsys.errors import Interrupted
from buildsys.recipe.load import load_recipe

FAKE_TOKEN = "tokE3b1c9d8a7f6e5d4c3b2a1908f7e6d5SECRETXYZ"
WEB_URL = "https://workbench.aihub.qualcomm.com"
# The service is faked at the qai_hub module; its API host only has to resolve (it is looked up
# to tell "offline" from a transient failure), and localhost does on any machine.
API_URL = "https://localhost"
CONFIGURE_HINT = "qai-hub configure --api_token"
# The random dataset is fine here: the fake device runs the same model the reference does.
pytestmark = pytest.mark.filterwarnings("ignore:random dataset:UserWarning")

S23_ATTRS = ["chipset:qualcomm-snapdragon-8gen2", "format:phone", "framework:onnx",
             "framework:qnn", "framework:tflite", "os:android", "vendor:samsung"]
DEVICES = [
    qai_hub.Device("Samsung Galaxy S23", "13", list(S23_ATTRS)),
    qai_hub.Device("Samsung Galaxy S23", "14", list(S23_ATTRS)),
    qai_hub.Device("Samsung Galaxy S23 Ultra", "14", list(S23_ATTRS)),
    qai_hub.Device("Samsung Galaxy S24", "14",
                   [a.replace("8gen2", "8gen3") for a in S23_ATTRS]),
    qai_hub.Device("Snapdragon X Elite CRD", "11", ["chipset:qualcomm-snapdragon-x-elite",
                                                     "format:compute", "os:windows"]),
]
SUFFIX = {"tflite": ".tflite", "qnn_context_binary": ".bin", "qnn_dlc": ".dlc",
          "onnx": ".onnx"}
MODEL_TYPE = {"tflite": "TFLITE", "qnn_context_binary": "QNN_CONTEXT_BINARY",
              "qnn_dlc": "QNN_DLC", "onnx": "ONNX"}

def recipe_text(builds: str, extra_devices: str = "") -> str:
    return textwrap.dedent(f"""\
        recipe: hubtest
        models:
          tiny:
            source: {{python: "buildsys.zoo.tiny:tiny_convnet", seed: 0}}
            inputs: {{image: {{shape: [1, 3, 8, 8]}}}}
            outputs: [logits]
        datasets:
          rnd:
            random: {{seed: 0, low: 0.0, high: 1.0}}
            calibration: 4
            validation: 2
        quantization:
          w8a8: {{engine: onnxruntime, weights: int8, activations: int8, calibration: rnd}}
          hub8: {{engine: aihub, weights: int8, activations: int8, calibration: rnd}}
        targets:
          tflite: {{runtime: tflite}}
          qnn: {{runtime: qnn_context_binary, options: "--compute_unit npu"}}
          dlc: {{runtime: qnn_dlc}}
          linked:
            runtime: qnn_context_binary
            link: true
            link_options: "--qnn_options default_graph_htp_optimization_value=3"
        devices:
          s23: {{backend: aihub, name: "Samsung Galaxy S23"}}
          gen3: {{backend: aihub, attributes: [chipset:qualcomm-snapdragon-8gen3, os:android]}}
          s23-ish: {{backend: aihub, attributes: [chipset:qualcomm-snapdragon-8gen2]}}
          s32: {{backend: aihub, name: "Samsung Galaxy S32"}}{extra_devices}
        builds:
        {textwrap.indent(builds.strip(), "  ")}
        validate: {{dataset: rnd, psnr_min_db: 12}}
        """)


# --------------------------------------------------------------------------- the fake service


def profile_dict() -> dict[str, Any]:
    """What InferenceJob.download_profile() returns, made by qai_hub's own converter."""
    units = [pb.COMPUTE_UNIT_NPU] * 3 + [pb.COMPUTE_UNIT_CPU]
    detail = pb.ProfileDetail(
        major_version=1, minor_version=2, execution_time=812,
        after_execution_peak_memory=3_000_000, cold_load_time=90_000, warm_load_time=20_000,
        execution_memory=pb.ProfileDetail.MemoryUsage(
            peak=pb.Range(lower=1_000_000, upper=2_600_000),
            increase=pb.Range(lower=0, upper=100_000)),
        layer_details=[pb.LayerDetail(name=f"op{i}", layer_type_name="Conv2d", compute_unit=u)
                       for i, u in enumerate(units)],
    )
    return _profile_pb_to_python_dict(detail)


class FakeHub:
    """`create_autospec(qai_hub)` wired to behave like AI Hub with one device farm.

    `statuses[kind]` is the sequence of status codes new jobs of that kind go through (the last
    one repeats); `messages[kind]` the failure message."""

    def __init__(self) -> None:
        self.hub = mock.create_autospec(qai_hub)
        self.jobs: dict[str, Any] = {}
        self.models: dict[int, bytes] = {}  # id(model object) -> ONNX bytes it holds
        self.datasets: dict[int, dict[str, list[np.ndarray]]] = {}
        self.statuses: dict[str, tuple[str, ...]] = {}
        self.messages: dict[str, str] = {}
        hub = self.hub
        hub.Device.side_effect = qai_hub.Device
        hub.QuantizeDtype = qai_hub.QuantizeDtype
        hub.get_devices.side_effect = self.get_devices
        hub.get_job.side_effect = self.get_job
        hub.upload_model.side_effect = self.upload_model
        hub.upload_dataset.side_effect = self.upload_dataset
        hub.submit_compile_job.side_effect = self.submit_compile
        hub.submit_quantize_job.side_effect = self.submit_quantize
        hub.submit_inference_job.side_effect = self.submit_inference
        hub.submit_link_job.side_effect = self.submit_link

    # service calls
    @staticmethod
    def get_devices(name: str = "", os: str = "", attributes: Any = None) -> list[Any]:
        attrs = [attributes] if isinstance(attributes, str) else list(attributes or [])
        return [d for d in DEVICES if (not name or d.name == name) and (not os or d.os == os)
                and all(a in d.attributes for a in attrs)]

    def get_job(self, job_id: str, job_type: Any = None) -> Any:
        if job_id not in self.jobs:
            raise UserError(f"Job ID '{job_id}' could not be found.")
        return self.jobs[job_id]

    def upload_model(self, model: str, name: str | None = None, project: Any = None) -> Any:
        uploaded = mock.create_autospec(qai_hub.Model, instance=True)
        uploaded.model_type = qai_hub.SourceModelType.ONNX
        path = Path(model)
        self.models[id(uploaded)] = b"" if path.is_dir() else path.read_bytes()
        uploaded.name = name
        return uploaded

    def upload_dataset(self, data: Any, name: str | None = None, project: Any = None) -> Any:
        dataset = mock.create_autospec(qai_hub.Dataset, instance=True)
        self.datasets[id(dataset)] = {k: [np.array(a) for a in v] for k, v in data.items()}
        return dataset

    def _job(self, cls: type, kind: str) -> Any:
        job_id = f"j{kind[0]}{len(self.jobs) + 1:06d}"
        job = mock.create_autospec(cls, instance=True)
        job.job_id = job_id
        job.url = f"{WEB_URL}/jobs/{job_id}/"
        codes = list(self.statuses.get(kind, ("SUCCESS",)))
        message = self.messages.get(kind)

        def next_status() -> qai_hub.JobStatus:
            code = codes.pop(0) if len(codes) > 1 else codes[0]
            return qai_hub.JobStatus(qai_hub.JobStatus.State[code],
                                     message if code == "FAILED" else None)

        job.get_status.side_effect = next_status
        self.jobs[job_id] = job
        return job

    def submit_compile(self, model: Any, device: Any, name: str | None = None,
                       input_specs: Any = None, options: str = "", single_compile: bool = True,
                       calibration_data: Any = None, retry: bool = True,
                       project: Any = None) -> Any:
        job = self._job(qai_hub.CompileJob, "compile")
        runtime = options.split("--target_runtime ")[1].split()[0]
        onnx_bytes = self.models[id(model)]
        target = mock.create_autospec(qai_hub.Model, instance=True)
        target.model_type = qai_hub.SourceModelType[MODEL_TYPE[runtime]]
        self.models[id(target)] = onnx_bytes
        job.get_target_model.return_value = target
        job.device = device

        def download(filename: str) -> str:
            path = Path(filename) / f"{job.job_id}_optimized{SUFFIX[runtime]}"
            path.write_bytes(f"{runtime} compiled model".encode() + onnx_bytes[:64])
            return str(path)

        job.download_target_model.side_effect = download
        return job

    def submit_link(self, models: Any, device: Any, name: str | None = None,
                    options: str = "", project: Any = None) -> Any:
        job = self._job(qai_hub.LinkJob, "link")
        assert all(m.model_type == qai_hub.SourceModelType.QNN_DLC for m in models)
        target = mock.create_autospec(qai_hub.Model, instance=True)
        target.model_type = qai_hub.SourceModelType.QNN_CONTEXT_BINARY
        self.models[id(target)] = self.models[id(models[0])]  # runs like the model it links
        job.get_target_model.return_value = target

        def download(filename: str) -> str:
            path = Path(filename) / f"{job.job_id}_linked.bin"
            path.write_bytes(b"linked context binary")
            return str(path)

        job.download_target_model.side_effect = download
        return job

    def submit_quantize(self, model: Any, calibration_data: Any, weights_dtype: Any = None,
                        activations_dtype: Any = None, name: str | None = None,
                        options: str = "", project: Any = None) -> Any:
        job = self._job(qai_hub.QuantizeJob, "quantize")
        onnx_bytes = self.models[id(model)]

        def download(filename: str) -> str:  # stands in for the QDQ model
            path = Path(filename) / f"{job.job_id}.onnx"
            path.write_bytes(onnx_bytes)
            return str(path)

        job.download_target_model.side_effect = download
        return job

    def submit_inference(self, model: Any, device: Any, inputs: Any = None,
                         name: str | None = None, options: str = "", retry: bool = True,
                         profile: bool = True, project: Any = None) -> Any:
        import onnxruntime as ort

        job = self._job(qai_hub.InferenceJob, "inference")
        session = ort.InferenceSession(self.models[id(model)],
                                       providers=["CPUExecutionProvider"])
        data = self.datasets[id(inputs)]
        count = len(next(iter(data.values())))
        results = [session.run(None, {k: v[i] for k, v in data.items()}) for i in range(count)]
        names = [o.name for o in session.get_outputs()]
        if model.model_type == qai_hub.SourceModelType.TFLITE:  # TFLite renames outputs
            names = [f"output_{i}" for i in range(len(names))]
        job.download_output_data.return_value = {
            name: [r[i] for r in results] for i, name in enumerate(names)}
        job.download_profile.return_value = profile_dict() if profile else {}
        return job

    # what the tests look at
    def submits(self) -> int:
        return sum(m.call_count for m in (self.hub.submit_compile_job,
                                          self.hub.submit_quantize_job,
                                          self.hub.submit_link_job,
                                          self.hub.submit_inference_job))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project dir, a HOME without qai_hub config, and process state the inline executor
    touches (thread variables, sys.path, cwd) restored afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("QAIHUB_CLIENT_INI", "MODELBUILD_CACHE_DIR", "MODELBUILD_AIHUB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(aihub_stages.WAIT_ENV, "600")  # a job that never ends: no endless loop
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MODELBUILD_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv(aihub_stages.POLL_ENV, "5")
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    yield project


@pytest.fixture
def token(isolated: Path, tmp_path: Path) -> str:
    config = tmp_path / "home" / ".qai_hub" / "client.ini"
    config.parent.mkdir(parents=True)
    config.write_text(f"[api]\napi_token = {FAKE_TOKEN}\napi_url = {API_URL}\n"
                      f"web_url = {WEB_URL}\n")
    return FAKE_TOKEN


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Patched in where AIHubClient gets its hub; retries/polls sleep into a list."""
    service = FakeHub()
    monkeypatch.setattr(AIHubClient, "hub", property(lambda self: service.hub))
    service.sleeps = []  # type: ignore[attr-defined]
    real_new_client = aihub_stages.new_client

    def new_client() -> AIHubClient:
        client = real_new_client()
        client._sleep = service.sleeps.append  # type: ignore[attr-defined]
        return client

    monkeypatch.setattr(aihub_stages, "new_client", new_client)
    return service


def build(project: Path, builds: str, *, keep_going: bool = False,
          patterns: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    recipe_path = project / "recipe.yaml"
    recipe_path.write_text(recipe_text(builds))
    report_path = project / "report.json"
    report_path.unlink(missing_ok=True)
    code = run_build(load_recipe(recipe_path), BuildOptions(
        inline=True, jobs=1, keep_going=keep_going, report=report_path, quiet=True,
        patterns=patterns or []))
    report = json.loads(report_path.read_text())
    return code, {s["id"]: s for s in report["stages"]}


def of_status(stages: dict[str, Any], status: str) -> set[str]:
    return {s for s, v in stages.items() if v["status"] == status}


W8A8_BOTH = "- {model: tiny, quantization: w8a8, target: [tflite, qnn], device: s23}"
COMPILE_TFLITE = "tiny/w8a8/tflite@s23/compile"
COMPILE_QNN = "tiny/w8a8/qnn@s23/compile"
INFER_TFLITE = "tiny/w8a8/tflite/s23/infer"
INFER_QNN = "tiny/w8a8/qnn/s23/infer"


# --------------------------------------------------------------------------- tests


def test_compile_infer_validate_on_a_named_device_then_fully_cached(
        token: str, fake: FakeHub, isolated: Path) -> None:
    code, stages = build(isolated, W8A8_BOTH)
    assert code == 0, {s: v.get("error") for s, v in stages.items() if v["status"] != "built"}
    # (the two validations see identical outputs here: the second is an early-cutoff hit)
    assert of_status(stages, "built") | of_status(stages, "cached") == set(stages)
    assert {COMPILE_TFLITE, COMPILE_QNN, INFER_TFLITE, INFER_QNN} <= of_status(stages, "built")
    build_dir = isolated / "build" / "hubtest"

    job = json.loads((build_dir / COMPILE_TFLITE / "job.json").read_text())
    assert job["runtime"] == "tflite"
    assert job["device"] == {"name": "Samsung Galaxy S23", "os": "14",
                             "chipset": "qualcomm-snapdragon-8gen2"}
    assert job["url"] == f"{WEB_URL}/jobs/{job['job_id']}/"
    assert job["model"] == ["model.tflite"]
    assert (build_dir / COMPILE_TFLITE / "model.tflite").read_bytes().startswith(b"tflite")
    # Each status change of the job is logged (and shown live) with its id, device and link.
    log = (build_dir / "logs" / f"{COMPILE_TFLITE.replace('/', '__')}.log").read_text()
    assert f"compile job {job['job_id']} on Samsung Galaxy S23: SUCCESS ({job['url']})" in log
    qnn_job = json.loads((build_dir / COMPILE_QNN / "job.json").read_text())
    assert qnn_job["model"] == ["model.bin"]

    # What was submitted: the QDQ ONNX from the local quantize stage, the recipe's input
    # specs and options, the newest OS of the named device.
    calls = fake.hub.submit_compile_job.call_args_list
    assert len(calls) == 2
    by_runtime = {c.kwargs["options"].split()[1]: c.kwargs for c in calls}
    assert set(by_runtime) == {"tflite", "qnn_context_binary"}
    assert by_runtime["qnn_context_binary"]["options"] == \
        "--target_runtime qnn_context_binary --compute_unit npu"
    assert by_runtime["tflite"]["input_specs"] == {"image": ((1, 3, 8, 8), "float32")}
    assert by_runtime["tflite"]["device"] == qai_hub.Device("Samsung Galaxy S23", "14")
    quantized = (build_dir / "tiny/w8a8/quantize/model.onnx").read_bytes()
    uploaded = fake.hub.upload_model.call_args_list
    assert [Path(c.args[0]).name for c in uploaded] == ["model.onnx", "model.onnx"]
    assert all(fake.models[id(c.kwargs["model"])] == quantized for c in calls)

    # Inference with profiling on the compiled model (by compile job id: no re-upload), the
    # validation samples as inputs; profile summary and outputs kept; validation ran.
    infer_calls = fake.hub.submit_inference_job.call_args_list
    assert len(infer_calls) == 2 and all(c.kwargs["profile"] is True for c in infer_calls)
    tflite_target = fake.jobs[job["job_id"]].get_target_model.return_value
    assert any(c.kwargs["model"] is tflite_target for c in infer_calls)
    sent = fake.datasets[id(infer_calls[0].kwargs["inputs"])]
    assert list(sent) == ["image"] and len(sent["image"]) == 2
    summary = json.loads((build_dir / INFER_TFLITE / "infer.json").read_text())
    assert summary["where"] == "Samsung Galaxy S23 (AI Hub)"
    assert summary["runtime"] == "tflite"
    assert summary["estimated_inference_time_ms"] == 0.812
    assert summary["peak_memory_range_mb"] == [1, 3]
    assert summary["compute_unit_ops"] == {"NPU": 3, "GPU": 0, "CPU": 1}
    assert summary["url"].endswith(f"/jobs/{summary['job_id']}/")
    with np.load(build_dir / INFER_TFLITE / "outputs.npz") as outputs:
        assert outputs.files  # TFLite's output_0 mapped back to the recipe's "logits"
    validation = json.loads(
        (build_dir / "tiny/w8a8/tflite/s23/validate/validation.json").read_text())
    assert validation["passed"] and validation["outputs"]["logits"]["psnr_db"] > 12

    # Second build: everything cached, nothing submitted, nothing even asked.
    fake.hub.reset_mock()
    code, stages = build(isolated, W8A8_BOTH)
    assert code == 0
    assert of_status(stages, "cached") == set(stages)
    assert fake.submits() == 0
    assert fake.hub.method_calls == []


def test_quantize_job_and_dlc_and_device_by_attributes(
        token: str, fake: FakeHub, isolated: Path) -> None:
    code, stages = build(isolated, "- {model: tiny, quantization: hub8, target: dlc, "
                                   "device: gen3}")
    assert code == 0, {s: v.get("error") for s, v in stages.items()}
    quantize = fake.hub.submit_quantize_job.call_args
    assert quantize.kwargs["weights_dtype"] == qai_hub.QuantizeDtype.INT8
    assert quantize.kwargs["activations_dtype"] == qai_hub.QuantizeDtype.INT8
    calibration = fake.datasets[id(quantize.kwargs["calibration_data"])]
    assert len(calibration["image"]) == 4
    exported = (isolated / "build/hubtest/tiny/export/model.onnx").read_bytes()
    assert (isolated / "build/hubtest/tiny/hub8/quantize/model.onnx").read_bytes() == exported
    assert stages["tiny/hub8/quantize"]["metrics"]["engine"] == "aihub"
    job = json.loads((isolated / "build/hubtest/tiny/hub8/dlc@gen3/compile/job.json").read_text())
    assert job["device"]["name"] == "Samsung Galaxy S24"
    assert job["model"] == ["model.dlc"]
    fake.hub.get_devices.assert_any_call(
        attributes=["chipset:qualcomm-snapdragon-8gen3", "os:android"])
    assert stages["tiny/hub8/dlc/gen3/validate"]["status"] == "built"


def test_link_target_compiles_a_dlc_then_links_it_into_a_context_binary(
        token: str, fake: FakeHub, isolated: Path) -> None:
    builds = "- {model: tiny, quantization: w8a8, target: linked, device: s23}"
    code, stages = build(isolated, builds)
    assert code == 0, {s: v.get("error") for s, v in stages.items()}
    compile_call = fake.hub.submit_compile_job.call_args
    assert compile_call.kwargs["options"].startswith("--target_runtime qnn_dlc")
    link_call = fake.hub.submit_link_job.call_args
    compile_job = json.loads(
        (isolated / "build/hubtest/tiny/w8a8/linked@s23/compile/job.json").read_text())
    compiled_model = fake.jobs[compile_job["job_id"]].get_target_model.return_value
    assert link_call.kwargs["models"] == [compiled_model]
    assert link_call.kwargs["device"] == qai_hub.Device("Samsung Galaxy S23", "14")
    assert link_call.kwargs["options"] == "--qnn_options default_graph_htp_optimization_value=3"
    link_dir = isolated / "build/hubtest/tiny/w8a8/linked@s23/link"
    link_job = json.loads((link_dir / "job.json").read_text())
    assert link_job["runtime"] == "qnn_context_binary"
    assert link_job["linked"] == [compile_job["job_id"]]
    assert (link_dir / "model.bin").read_bytes() == b"linked context binary"
    # Inference runs the linked context binary, and validates like any other.
    linked_model = fake.jobs[link_job["job_id"]].get_target_model.return_value
    assert fake.hub.submit_inference_job.call_args.kwargs["model"] is linked_model
    assert stages["tiny/w8a8/linked/s23/validate"]["status"] == "built"
    # Second build: all cached, nothing submitted.
    fake.hub.reset_mock()
    code, stages = build(isolated, builds)
    assert code == 0 and fake.submits() == 0
    assert of_status(stages, "cached") == set(stages)


def test_build_ends_with_the_on_device_summary_per_variant(
        token: str, fake: FakeHub, isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe_path = isolated / "recipe.yaml"
    recipe_path.write_text(recipe_text(W8A8_BOTH))
    for _ in range(2):  # built, then cached: the summary is there both times
        assert run_build(load_recipe(recipe_path), BuildOptions(inline=True, jobs=1)) == 0
        err = capsys.readouterr().err
        assert "AI Hub on-device results" in err
        rows = [line for line in err.splitlines() if line.startswith("  tiny/w8a8/")]
        assert len(rows) == 2, err
        tflite = next(r for r in rows if r.startswith("  tiny/w8a8/tflite/s23"))
        psnr = json.loads((isolated / "build/hubtest/tiny/w8a8/tflite/s23/validate/validation.json")
                          .read_text())["outputs"]["logits"]["psnr_db"]
        for shown in ("Samsung Galaxy S23", "tflite", "0.812 ms", "1-3 MB", "3/0/1",
                      f"{psnr:.1f} dB", f"{WEB_URL}/jobs/"):
            assert shown in tflite, (shown, tflite)
    assert fake.submits() == 4  # two compiles and two inferences, once


@pytest.mark.parametrize(("device", "expected"), [
    ("s23-ish", ["matches 2 devices: Samsung Galaxy S23; Samsung Galaxy S23 Ultra"]),
    ("s32", ["no AI Hub device is named 'Samsung Galaxy S32'; close matches:",
             "Samsung Galaxy S23;"]),
])
def test_ambiguous_or_unknown_device_fails_with_candidates(
        token: str, fake: FakeHub, isolated: Path, device: str, expected: list[str]) -> None:
    code, stages = build(isolated, f"- {{model: tiny, quantization: w8a8, target: qnn, "
                                   f"device: {device}}}")
    assert code == 1
    failed = stages[f"tiny/w8a8/qnn@{device}/compile"]
    assert failed["status"] == "failed"
    assert all(text in failed["error"] for text in expected), failed["error"]
    assert "Snapdragon X Elite" not in failed["error"]
    assert fake.submits() == 0


def test_interrupted_wait_resumes_the_same_job(
        token: str, fake: FakeHub, isolated: Path) -> None:
    builds = "- {model: tiny, quantization: w8a8, target: tflite, device: s23}"
    fake.statuses["compile"] = ("CREATED", "OPTIMIZING_MODEL")
    interrupted = iter([True])

    real_job = fake._job

    def job_then_ctrl_c(cls: type, kind: str) -> Any:
        job = real_job(cls, kind)
        if kind == "compile" and next(interrupted, False):
            job.get_status.side_effect = KeyboardInterrupt  # Ctrl-C while waiting
        return job

    fake._job = job_then_ctrl_c  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        build(isolated, builds)
    assert fake.hub.submit_compile_job.call_count == 1
    (job_id,) = fake.jobs
    assert not (isolated / "build" / "hubtest" / COMPILE_TFLITE).exists()  # nothing half-stored

    # Re-run: the job is still optimizing on AI Hub, then finishes. No second submit.
    fake.jobs[job_id].get_status.side_effect = None
    fake.jobs[job_id].get_status.side_effect = iter([
        qai_hub.JobStatus(qai_hub.JobStatus.State.OPTIMIZING_MODEL),
        qai_hub.JobStatus(qai_hub.JobStatus.State.SUCCESS),
        qai_hub.JobStatus(qai_hub.JobStatus.State.SUCCESS),
    ])
    fake.hub.reset_mock()
    code, stages = build(isolated, builds)
    assert code == 0, {s: v.get("error") for s, v in stages.items()}
    assert fake.hub.submit_compile_job.call_count == 0
    assert fake.hub.upload_model.call_count == 0
    fake.hub.get_job.assert_any_call(job_id)
    job = json.loads((isolated / "build" / "hubtest" / COMPILE_TFLITE / "job.json").read_text())
    assert job["job_id"] == job_id
    assert fake.sleeps == [5.0]  # one poll interval while it was RUNNING


def test_job_still_running_past_the_wait_limit_is_picked_up_next_time(
        token: str, fake: FakeHub, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = "- {model: tiny, quantization: w8a8, target: qnn, device: s23}"
    fake.statuses["compile"] = ("OPTIMIZING_MODEL",)
    monkeypatch.setenv(aihub_stages.WAIT_ENV, "10")
    code, stages = build(isolated, builds)
    assert code == 1
    (job_id,) = fake.jobs
    error = stages[COMPILE_QNN]["error"]
    assert f"compile job {job_id} is still OPTIMIZING_MODEL after waiting 10 s" in error
    assert "Run the build again to wait for the same job" in error
    assert f"{WEB_URL}/jobs/{job_id}/" in error
    assert stages[INFER_QNN]["status"] == "skipped"

    fake.jobs[job_id].get_status.side_effect = None
    fake.jobs[job_id].get_status.return_value = qai_hub.JobStatus(
        qai_hub.JobStatus.State.SUCCESS)
    fake.statuses.clear()
    fake.hub.submit_compile_job.reset_mock()
    code, stages = build(isolated, builds)
    assert code == 0
    assert fake.hub.submit_compile_job.call_count == 0
    assert json.loads((isolated / "build" / "hubtest" / COMPILE_QNN / "job.json").read_text())[
        "job_id"] == job_id


def test_failed_job_reports_message_and_link_then_resubmits(
        token: str, fake: FakeHub, isolated: Path) -> None:
    builds = "- {model: tiny, quantization: w8a8, target: qnn, device: s23}"
    fake.statuses["compile"] = ("OPTIMIZING_MODEL", "FAILED")
    fake.messages["compile"] = "Compilation failed: op 'Foo' is not supported on HTP"
    code, stages = build(isolated, builds)
    assert code == 1
    (job_id,) = fake.jobs
    error = stages[COMPILE_QNN]["error"]
    assert f"AI Hub compile job {job_id} failed" in error
    assert "op 'Foo' is not supported on HTP" in error
    assert f"{WEB_URL}/jobs/{job_id}/" in error
    assert stages[INFER_QNN]["status"] == "skipped"
    assert not (isolated / "build" / "hubtest" / COMPILE_QNN).exists()

    fake.statuses.clear()
    code, _ = build(isolated, builds)
    assert code == 0
    assert fake.hub.submit_compile_job.call_count == 2  # a failed job is not waited for again


def test_network_errors_are_retried_a_bounded_number_of_times(
        token: str, fake: FakeHub, isolated: Path) -> None:
    builds = "- {model: tiny, quantization: w8a8, target: qnn, device: s23}"
    fake.hub.submit_compile_job.side_effect = InternalError("502 Bad Gateway")
    code, stages = build(isolated, builds)
    assert code == 1
    error = stages[COMPILE_QNN]["error"]
    assert "failed after 5 attempts" in error and "502 Bad Gateway" in error
    assert len(fake.sleeps) == 4  # bounded back-off, never a real sleep here
    assert not fake.jobs


def test_no_token_fails_ai_hub_stages_at_plan_time_local_stages_still_build(
        isolated: Path, fake: FakeHub) -> None:
    code, stages = build(isolated, W8A8_BOTH, keep_going=True)
    assert code == 1
    for stage in (COMPILE_TFLITE, COMPILE_QNN):
        assert stages[stage]["status"] == "failed"
        assert CONFIGURE_HINT in stages[stage]["error"]
    assert {"tiny/export", "tiny/reference", "tiny/w8a8/quantize"} <= of_status(stages, "built")
    assert {INFER_TFLITE, INFER_QNN, "tiny/w8a8/qnn/s23/validate"} <= of_status(
        stages, "skipped")
    assert fake.hub.method_calls == []  # never ran, never asked the service

    # AI Hub switched off: the same stages are skipped and the build succeeds.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELBUILD_AIHUB", "off")
        code, stages = build(isolated, W8A8_BOTH)
    assert code == 0, {s: (v["status"], v.get("error")) for s, v in stages.items()}
    assert {COMPILE_TFLITE, COMPILE_QNN, INFER_QNN} <= of_status(stages, "skipped")


def test_plan_shows_the_token_problem(isolated: Path, fake: FakeHub) -> None:
    from buildsys.build import open_store, plan_build
    from buildsys.plan.render import plan_table

    (isolated / "recipe.yaml").write_text(recipe_text(W8A8_BOTH))
    recipe = load_recipe(isolated / "recipe.yaml")
    store = open_store(recipe, None)
    try:
        plan = plan_build(recipe, store, BuildOptions())
    finally:
        store.close()
    assert plan.stages[COMPILE_QNN].status == "failed"
    assert CONFIGURE_HINT in plan.stages[COMPILE_QNN].reason
    summary = plan_table(plan).splitlines()[-1]
    assert summary.endswith(f", {plan.count('failed')} cannot run") and plan.count("failed") >= 2
    assert plan.stages[INFER_QNN].status == "skipped"
    assert plan.stages["tiny/export"].status == "run"


def test_offline_machine_fails_ai_hub_stages_at_plan_time(
        token: str, fake: FakeHub, isolated: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "home" / ".qai_hub" / "client.ini"
    config.write_text(config.read_text().replace(API_URL, "https://aihub.invalid"))
    code, stages = build(isolated, W8A8_BOTH, keep_going=True)
    assert code == 1
    for stage in (COMPILE_TFLITE, COMPILE_QNN):
        assert stages[stage]["status"] == "failed"
        assert "aihub.invalid does not resolve" in stages[stage]["error"]
        assert "--offline" in stages[stage]["error"]
    assert "tiny/w8a8/quantize" in of_status(stages, "built")
    assert fake.hub.method_calls == []  # one name lookup, no call, no retry, no wait
    assert fake.sleeps == []  # type: ignore[attr-defined]


def test_results_in_the_store_need_no_token(
        token: str, fake: FakeHub, isolated: Path, tmp_path: Path) -> None:
    assert build(isolated, W8A8_BOTH)[0] == 0
    (tmp_path / "home" / ".qai_hub" / "client.ini").unlink()
    fake.hub.reset_mock()
    code, stages = build(isolated, W8A8_BOTH)
    assert code == 0
    assert of_status(stages, "cached") == set(stages)
    assert fake.hub.method_calls == []


def test_token_never_lands_in_outputs_logs_or_store(
        token: str, fake: FakeHub, isolated: Path, tmp_path: Path) -> None:
    # The service echoing the token back in errors and failure messages must not leak it.
    flaky = iter([InternalError(f"upstream said: bad header Authorization: token {token}")])

    def upload(model: str, name: str | None = None, project: Any = None) -> Any:
        error = next(flaky, None)
        if error is not None:
            raise error
        return FakeHub.upload_model(fake, model, name, project)

    fake.hub.upload_model.side_effect = upload
    fake.statuses["inference"] = ("FAILED",)
    fake.messages["inference"] = f"Device error (token={token})"
    code, stages = build(isolated, W8A8_BOTH, keep_going=True)
    assert code == 1
    assert "<redacted>" in stages[INFER_QNN]["error"]
    fake.statuses.clear()
    assert build(isolated, W8A8_BOTH)[0] == 0

    logs = list((isolated / "build" / "hubtest" / "logs").glob("*.log"))
    assert any("retry 1/4" in p.read_text() for p in logs)  # the echo went through a log
    needle = token.encode()
    scanned = 0
    for root in (isolated, tmp_path / "home" / ".qai_hub"):
        for path in root.rglob("*"):
            if path.is_file() and path.name != "client.ini":
                scanned += 1
                assert needle not in path.read_bytes(), path
    assert scanned > 20  # report, lock, logs, build outputs, store blobs and index


def test_modelbuild_devices_lists_and_caches(
        token: str, fake: FakeHub, isolated: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from buildsys.commands import run_subcommand

    assert run_subcommand("devices", ["--attribute", "chipset:qualcomm-snapdragon-8gen2"]) == 0
    out = capsys.readouterr().out
    assert "Samsung Galaxy S23 Ultra" in out and "Samsung Galaxy S24" not in out
    assert "qualcomm-snapdragon-8gen2" in out and "phone" in out
    cache = tmp_path / ".cache" / "aihub" / "devices.json"
    assert cache.is_file() and FAKE_TOKEN not in cache.read_text()
    fake.hub.get_devices.assert_called_once_with(
        attributes=["chipset:qualcomm-snapdragon-8gen2"])

    assert run_subcommand("devices", ["--attribute", "chipset:qualcomm-snapdragon-8gen2"]) == 0
    assert fake.hub.get_devices.call_count == 1  # served from the day-long cache
    assert run_subcommand("devices", ["--attribute", "chipset:qualcomm-snapdragon-8gen2",
                                      "--refresh"]) == 0
    assert fake.hub.get_devices.call_count == 2
    assert run_subcommand("devices", []) == 0
    assert "Snapdragon X Elite CRD" in capsys.readouterr().out


def test_modelbuild_devices_without_token(
        isolated: Path, fake: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    from buildsys.commands import run_subcommand

    assert run_subcommand("devices", []) == 1
    assert CONFIGURE_HINT in capsys.readouterr().err
    assert fake.hub.method_calls == []


# --------------------------------------------------------------------------- other model formats


def run_compile_stage(tmp_path: Path, inputs: dict[str, Path]) -> dict[str, Any]:
    from buildsys.stages.aihub import AIHubCompileStage
    from buildsys.stages.base import StageContext

    ctx = StageContext(
        stage_id="net/float/tflite@s23/compile",
        params={"runtime": "tflite", "options": "", "device": {"name": "Samsung Galaxy S23"},
                "io": {"inputs": {"x": {"shape": [1, 4], "dtype": "float32"}},
                       "outputs": ["y"]}},
        inputs=inputs, out_dir=tmp_path / "out", work_dir=tmp_path / "work",
        extras={"memo_dir": str(tmp_path / "memo"), "stage_key": "k" * 64})
    for directory in (ctx.out_dir, ctx.work_dir):
        directory.mkdir()
    return AIHubCompileStage().run(ctx)


def test_compile_accepts_a_torch_export_program(
        token: str, fake: FakeHub, tmp_path: Path) -> None:
    import zipfile

    pt2 = tmp_path / "in" / "net.pt2"
    pt2.parent.mkdir()
    with zipfile.ZipFile(pt2, "w") as archive:  # the layout torch.export.save writes
        archive.writestr("net/version", "1")
    metrics = run_compile_stage(tmp_path, {"captured": pt2})  # e.g. the capture stage's
    fake.hub.upload_model.assert_called_once_with(str(pt2), name="net.pt2")
    assert metrics["where"] == "Samsung Galaxy S23 (AI Hub)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["job.json", "model.tflite"]


def test_compile_accepts_an_aimet_onnx_directory(
        token: str, fake: FakeHub, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = tmp_path / "aimet"
    src.mkdir()
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [weight])
    onnx.save_model(helper.make_model(graph), str(src / "net.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="net.data", size_threshold=0)
    (src / "net.encodings").write_text('{"activation_encodings": [], "param_encodings": []}')
    run_compile_stage(tmp_path, {f"aimet/{p.name}": p for p in src.iterdir()})
    (uploaded,), _ = fake.hub.upload_model.call_args
    assert Path(uploaded).is_relative_to(tmp_path / "work")
    assert sorted(p.name for p in Path(uploaded).iterdir()) == [
        "net.data", "net.encodings", "net.onnx"]



def test_example_recipe_builds_against_the_fake_service(
        token: str, fake: FakeHub, isolated: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "aihub_tiny.yaml"
    recipe_path = isolated / example.name
    recipe_path.write_text(example.read_text())
    code = run_build(load_recipe(recipe_path), BuildOptions(inline=True, jobs=1, quiet=True))
    assert code == 0
    runtimes = sorted(c.kwargs["options"].split()[1]
                      for c in fake.hub.submit_compile_job.call_args_list)
    assert runtimes == ["qnn_context_binary", "tflite"]
    assert {c.kwargs["device"].name for c in fake.hub.submit_compile_job.call_args_list} == {
        "Samsung Galaxy S23"}
    for target in ("tflite", "qnn"):
        validation = json.loads((isolated / "build" / "aihub_tiny" / "tiny" / "w8a8" / target
                                 / "galaxy-s23/validate/validation.json").read_text())
        assert validation["passed"]
