"""Tests for buildsys.backends.aihub against an autospec'd qai_hub 0.56.

No network and no real token: ``create_autospec(qai_hub)`` stands in for the service (so a wrong
function name or keyword fails), jobs are ``create_autospec(qai_hub.CompileJob, instance=True)``
etc. returning real ``qai_hub.JobStatus`` objects, devices are real ``qai_hub.Device`` objects,
and the configuration check runs for real against a temporary HOME.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import onnx
import pytest
import qai_hub
import requests
from onnx import TensorProto, helper, numpy_helper
from qai_hub import public_api_pb2 as pb
from qai_hub.client import (
    InternalError,
    RateLimitedError,
    UserError,
    _profile_pb_to_python_dict,
    _raise_if_hub_user_error,
)
from qai_hub.public_rest_api import APIException

from buildsys.backends import aihub
from buildsys.backends.aihub import (
    TARGET_RUNTIMES,
    AIHubClient,
    DeviceInfo,
    JobOutcome,
    check_token,
    summarize_profile,
    validate_aimet_dir,
    validate_model_dir,
)
from buildsys.errors import StageError

FAKE_TOKEN = "tok9f8e7d6c5b4a39281706f5e4d3c2b1a0SECRET"
WEB_URL = "https://workbench.aihub.qualcomm.com"
# The service is faked at the qai_hub module; its API host only has to resolve (it is looked up
# to tell "offline" from a transient failure), and localhost does on any machine.
API_URL = "https://localhost"
CONFIGURE_HINT = "qai-hub configure --api_token <your token>"

S23_ATTRS = [
    "chipset:qualcomm-snapdragon-8gen2",
    "format:phone",
    "framework:onnx",
    "framework:qnn",
    "framework:tflite",
    "os:android",
    "vendor:samsung",
]
DEVICES = [
    qai_hub.Device("Samsung Galaxy S23", "13", list(S23_ATTRS)),
    qai_hub.Device("Samsung Galaxy S23", "14", list(S23_ATTRS)),
    qai_hub.Device("Samsung Galaxy S23 Ultra", "14", list(S23_ATTRS)),
    qai_hub.Device(
        "Samsung Galaxy S24",
        "14",
        [a.replace("8gen2", "8gen3") for a in S23_ATTRS],
    ),
    qai_hub.Device(
        "Snapdragon X Elite CRD",
        "11",
        ["chipset:qualcomm-snapdragon-x-elite", "format:compute", "framework:qnn", "os:windows"],
    ),
]


# --------------------------------------------------------------------------- helpers


def write_config(path: Path, body: str | None = None) -> Path:
    """Write a client.ini the way `qai-hub configure` does (section [api])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if body is None:
        body = (
            "[api]\n"
            f"api_token = {FAKE_TOKEN}\n"
            f"api_url = {API_URL}\n"
            f"web_url = {WEB_URL}\n"
            "verbose = True\n"
        )
    path.write_text(body, encoding="utf-8")
    return path


def fake_get_devices(name: str = "", os: str = "", attributes: Any = None) -> list[Any]:
    """AI Hub's filtering: exact name, exact os, all attributes."""
    attrs = [attributes] if isinstance(attributes, str) else list(attributes or [])
    return [
        d
        for d in DEVICES
        if (not name or d.name == name)
        and (not os or d.os == os)
        and all(a in d.attributes for a in attrs)
    ]


def status(code: str, message: str | None = None) -> qai_hub.JobStatus:
    return qai_hub.JobStatus(qai_hub.JobStatus.State[code], message)


def make_job(cls: type, job_id: str, codes: tuple[str, ...] = ("SUCCESS",), message=None) -> Any:
    job = mock.create_autospec(cls, instance=True)
    job.job_id = job_id
    job.url = f"{WEB_URL}/jobs/{job_id}/"
    remaining = [status(c, message if c == "FAILED" else None) for c in codes]

    def next_status() -> qai_hub.JobStatus:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    job.get_status.side_effect = next_status
    return job


def register_jobs(hub: Any, *jobs: Any) -> None:
    by_id = {j.job_id: j for j in jobs}

    def get_job(job_id: str, job_type: Any = None) -> Any:
        if job_id not in by_id:
            raise UserError(f"Job ID '{job_id}' could not be found.")
        return by_id[job_id]

    hub.get_job.side_effect = get_job


def tiny_onnx(path: Path, external: str | None = None) -> Path:
    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external,
            size_threshold=0,
        )
    return path


def make_aimet_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    tiny_onnx(root / "net.onnx", external="net.data")
    encodings = {"version": "1.0.0", "activation_encodings": [], "param_encodings": []}
    (root / "net.encodings").write_text(json.dumps(encodings), encoding="utf-8")
    return root


def make_pt2(path: Path) -> Path:
    # torch.export.save writes a zip archive; the backend only checks that much.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("net/version", "1")
    return path


def samples(n: int = 2, shape=(1, 4), dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with no qai_hub configuration at all."""
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.delenv("QAIHUB_CLIENT_INI", raising=False)
    return fake_home


@pytest.fixture
def configured(home: Path) -> Path:
    return write_config(home / ".qai_hub" / "client.ini")


@pytest.fixture
def hub() -> Any:
    hub = mock.create_autospec(qai_hub)
    hub.get_devices.side_effect = fake_get_devices
    return hub


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(hub: Any, configured: Path, sleeps: Sleeps) -> AIHubClient:
    return AIHubClient(hub, sleep=sleeps, poll_interval_s=5.0)


# --------------------------------------------------------------------------- import cost


def test_module_import_does_not_import_qai_hub_or_onnx() -> None:
    code = (
        "import sys, buildsys.backends.aihub\n"
        "heavy = [m for m in ('qai_hub', 'onnx', 'torch', 'requests') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_default_hub_is_qai_hub_and_pickling_drops_the_token(configured: Path) -> None:
    client = AIHubClient()
    assert client.hub is qai_hub
    client.check_token()
    blob = pickle.dumps(client)
    assert FAKE_TOKEN.encode() not in blob
    clone = pickle.loads(blob)
    assert clone.hub is qai_hub
    clone.check_token()  # reloads the configuration in the new process


# --------------------------------------------------------------------------- devices


def test_resolve_device_by_name_picks_newest_os(client: AIHubClient, hub: Any) -> None:
    info = client.resolve_device("Samsung Galaxy S23")
    assert info == DeviceInfo(
        name="Samsung Galaxy S23",
        os="14",
        attributes=sorted(S23_ATTRS),
        chipset="qualcomm-snapdragon-8gen2",
    )
    hub.get_devices.assert_called_once_with(name="Samsung Galaxy S23")
    assert DeviceInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_resolve_device_by_attributes(client: AIHubClient, hub: Any) -> None:
    info = client.resolve_device("chipset:qualcomm-snapdragon-8gen3, os:android")
    assert (info.name, info.os, info.chipset) == (
        "Samsung Galaxy S24",
        "14",
        "qualcomm-snapdragon-8gen3",
    )
    hub.get_devices.assert_called_once_with(
        attributes=["chipset:qualcomm-snapdragon-8gen3", "os:android"]
    )


def test_resolve_device_ambiguous_lists_the_candidates(client: AIHubClient) -> None:
    with pytest.raises(StageError) as err:
        client.resolve_device("chipset:qualcomm-snapdragon-8gen2")
    message = str(err.value)
    assert "matches 2 devices" in message
    assert "Samsung Galaxy S23; Samsung Galaxy S23 Ultra" in message


def test_resolve_unknown_name_suggests_close_names(client: AIHubClient, hub: Any) -> None:
    with pytest.raises(StageError) as err:
        client.resolve_device("Samsung Galaxy S32")
    message = str(err.value)
    assert "no AI Hub device is named 'Samsung Galaxy S32'" in message
    assert "Samsung Galaxy S23" in message
    assert "Snapdragon X Elite CRD" not in message
    # the suggestions come from the full list
    assert hub.get_devices.call_args_list[-1] == mock.call()


@pytest.mark.parametrize("server_rejects", [False, True])
def test_resolve_unknown_attribute_suggests_known_attributes(
    client: AIHubClient, hub: Any, server_rejects: bool
) -> None:
    known = {a for d in DEVICES for a in d.attributes}

    def strict_get_devices(name: str = "", os: str = "", attributes: Any = None) -> list[Any]:
        unknown = [a for a in attributes or [] if a not in known]
        if server_rejects and unknown:
            raise UserError(f"Invalid device attribute: {unknown[0]}")
        return fake_get_devices(name, os, attributes)

    hub.get_devices.side_effect = strict_get_devices
    with pytest.raises(StageError) as err:
        client.resolve_device("chipset:qualcomm-snapdragon-8-gen-2")
    assert "no device has attribute 'chipset:qualcomm-snapdragon-8-gen-2'" in str(err.value)
    assert "did you mean chipset:qualcomm-snapdragon-8gen2" in str(err.value)


def test_resolve_attributes_valid_alone_but_not_together(client: AIHubClient) -> None:
    with pytest.raises(StageError, match="no single device has all of"):
        client.resolve_device("chipset:qualcomm-snapdragon-x-elite,os:android")


def test_list_devices_cache_valid_for_a_day(client: AIHubClient, hub: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "devices.json"
    t0 = 1_700_000_000.0
    first = client.list_devices(["os:android"], cache_path=cache, now=t0)
    assert [d.name for d in first] == [
        "Samsung Galaxy S23",
        "Samsung Galaxy S23",
        "Samsung Galaxy S23 Ultra",
        "Samsung Galaxy S24",
    ]
    assert [d.os for d in first][:2] == ["13", "14"]
    assert hub.get_devices.call_count == 1
    hub.get_devices.assert_called_with(attributes=["os:android"])

    assert client.list_devices(["os:android"], cache_path=cache, now=t0 + 86_399) == first
    assert hub.get_devices.call_count == 1  # served from the cache

    every = client.list_devices(None, cache_path=cache, now=t0 + 10)  # another query
    assert len(every) == len(DEVICES)
    assert hub.get_devices.call_count == 2

    assert client.list_devices(["os:android"], cache_path=cache, now=t0 + 86_401) == first
    assert hub.get_devices.call_count == 3  # expired: fetched again

    cache.write_text("{not json", encoding="utf-8")
    assert client.list_devices(["os:android"], cache_path=cache, now=t0) == first
    assert hub.get_devices.call_count == 4  # corrupt cache: fetched again, rewritten
    assert json.loads(cache.read_text(encoding="utf-8"))["version"] == 1
    assert [p.name for p in cache.parent.iterdir()] == ["devices.json"]  # no temp files left


# --------------------------------------------------------------------------- compile


def test_submit_compile_pt2_makes_the_exact_calls(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    pt2 = make_pt2(tmp_path / "net.pt2")
    hub.submit_compile_job.return_value = make_job(qai_hub.CompileJob, "jcomp0001")

    job_id = client.submit_compile(
        pt2,
        "Samsung Galaxy S23",
        "qnn_context_binary",
        options="--compute_unit npu --quantize_io",
        input_specs={"image": ((1, 3, 8, 8), "float32")},
        name="ffnet",
    )

    assert job_id == "jcomp0001"
    hub.Device.assert_called_once_with(name="Samsung Galaxy S23", os="14")
    hub.upload_model.assert_called_once_with(str(pt2), name="net.pt2")
    hub.submit_compile_job.assert_called_once_with(
        model=hub.upload_model.return_value,
        device=hub.Device.return_value,
        name="ffnet",
        input_specs={"image": ((1, 3, 8, 8), "float32")},
        options="--target_runtime qnn_context_binary --compute_unit npu --quantize_io",
        calibration_data=None,
        retry=False,
    )
    hub.upload_dataset.assert_not_called()
    hub.submit_profile_job.assert_not_called()


@pytest.mark.parametrize("runtime", TARGET_RUNTIMES)
def test_submit_compile_every_target_runtime(
    client: AIHubClient, hub: Any, tmp_path: Path, runtime: str
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    hub.submit_compile_job.return_value = make_job(qai_hub.CompileJob, "jcomp0002")
    device = DeviceInfo("Samsung Galaxy S24", "14", [], "qualcomm-snapdragon-8gen3")
    assert client.submit_compile(model, device, runtime) == "jcomp0002"
    kwargs = hub.submit_compile_job.call_args.kwargs
    assert kwargs["options"] == f"--target_runtime {runtime}"
    assert kwargs["input_specs"] is None
    hub.Device.assert_called_once_with(name="Samsung Galaxy S24", os="14")
    hub.get_devices.assert_not_called()  # a DeviceInfo needs no lookup


def test_submit_compile_rejects_bad_runtime_and_options(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    device = DeviceInfo("Samsung Galaxy S24", "14")
    with pytest.raises(StageError, match="did you mean 'qnn_dlc'"):
        client.submit_compile(model, device, "qnn-dlc")
    with pytest.raises(StageError, match="set target_runtime instead"):
        client.submit_compile(model, device, "tflite", options="--target_runtime=onnx")
    with pytest.raises(StageError, match="input_specs\\['x'\\] dtype float64"):
        client.submit_compile(model, device, "tflite", input_specs={"x": ((1, 4), "float64")})
    assert hub.mock_calls == []


def test_submit_compile_with_calibration_uploads_a_dataset(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    hub.submit_compile_job.return_value = make_job(qai_hub.CompileJob, "jcomp0003")
    data = samples(3)
    client.submit_compile(
        model,
        DeviceInfo("Samsung Galaxy S23", "14"),
        "qnn_dlc",
        options="--quantize_full_type int8",
        calibration={"x": data},
        name="q8",
    )
    (uploaded,), kwargs = hub.upload_dataset.call_args
    assert kwargs == {"name": "q8-calibration"}
    assert list(uploaded) == ["x"]
    assert all(np.array_equal(a, b) for a, b in zip(uploaded["x"], data, strict=True))
    assert hub.submit_compile_job.call_args.kwargs["calibration_data"] is (
        hub.upload_dataset.return_value
    )
    assert hub.submit_compile_job.call_args.kwargs["options"] == (
        "--target_runtime qnn_dlc --quantize_full_type int8"
    )


def test_submit_compile_aimet_directory(client: AIHubClient, hub: Any, tmp_path: Path) -> None:
    model_dir = make_aimet_dir(tmp_path / "net.aimet")
    hub.submit_compile_job.return_value = make_job(qai_hub.CompileJob, "jcomp0004")
    assert client.submit_compile(model_dir, DeviceInfo("Samsung Galaxy S23", "14"), "onnx")
    hub.upload_model.assert_called_once_with(str(model_dir), name="net.aimet")


def test_onnx_file_with_external_weights_is_refused(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "big.onnx", external="big.data")
    with pytest.raises(StageError, match=re.escape("put big.onnx and one <name>.data file alone")):
        client.submit_compile(model, DeviceInfo("Samsung Galaxy S23", "14"), "tflite")
    hub.upload_model.assert_not_called()
    hub.submit_compile_job.assert_not_called()


def test_missing_model_and_bad_pt2(client: AIHubClient, hub: Any, tmp_path: Path) -> None:
    device = DeviceInfo("Samsung Galaxy S23", "14")
    with pytest.raises(StageError, match="not found"):
        client.submit_compile(tmp_path / "nope.pt2", device, "tflite")
    fake = tmp_path / "fake.pt2"
    fake.write_bytes(b"not a zip")
    with pytest.raises(StageError, match=re.escape("not a torch.export archive")):
        client.submit_compile(fake, device, "tflite")
    hub.upload_model.assert_not_called()


# --------------------------------------------------------------------------- quantize


def test_submit_quantize_makes_the_exact_calls(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    hub.submit_quantize_job.return_value = make_job(qai_hub.QuantizeJob, "jquant0001")
    data = samples(2)
    job_id = client.submit_quantize(model, {"x": data}, "int4", "int16", name="w4a16")
    assert job_id == "jquant0001"
    hub.upload_model.assert_called_once_with(str(model), name="net.onnx")
    hub.submit_quantize_job.assert_called_once_with(
        model=hub.upload_model.return_value,
        calibration_data=hub.upload_dataset.return_value,
        weights_dtype=hub.QuantizeDtype.INT4,
        activations_dtype=hub.QuantizeDtype.INT16,
        name="w4a16",
        options="",
    )
    assert hub.upload_dataset.call_args.kwargs == {"name": "w4a16-calibration"}


def test_submit_quantize_rejects_what_ai_hub_would(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    with pytest.raises(StageError, match="weights_dtype 'int16'"):
        client.submit_quantize(model, {"x": samples()}, "int16", "int8")
    with pytest.raises(StageError, match="activations_dtype 'int4'"):
        client.submit_quantize(model, {"x": samples()}, "int8", "int4")
    with pytest.raises(StageError, match="quantize jobs cannot take"):
        client.submit_quantize(make_pt2(tmp_path / "n.pt2"), {"x": samples()})
    with pytest.raises(StageError, match="quantize jobs cannot take"):
        client.submit_quantize(make_aimet_dir(tmp_path / "a.aimet"), {"x": samples()})
    with pytest.raises(StageError, match="same number of samples"):
        client.submit_quantize(model, {"x": samples(2), "y": samples(3)})
    with pytest.raises(StageError, match="dtype float64"):
        client.submit_quantize(model, {"x": samples(dtype=np.float64)})
    assert hub.mock_calls == []  # all of it is caught before any upload


# --------------------------------------------------------------------------- inference


def test_submit_inference_on_a_compile_job(client: AIHubClient, hub: Any) -> None:
    compile_job = make_job(qai_hub.CompileJob, "jcomp0005")
    target = mock.create_autospec(qai_hub.Model, instance=True)
    target.model_type = qai_hub.SourceModelType.QNN_CONTEXT_BINARY
    compile_job.get_target_model.return_value = target
    register_jobs(hub, compile_job)
    hub.submit_inference_job.return_value = make_job(qai_hub.InferenceJob, "jinfer0001")
    data = samples(2, shape=(1, 3, 8, 8))

    job_id = client.submit_inference(
        "jcomp0005", "Samsung Galaxy S23", inputs={"image": data}, profile=False, name="val"
    )

    assert job_id == "jinfer0001"
    hub.get_job.assert_called_once_with("jcomp0005")
    hub.upload_model.assert_not_called()
    (uploaded,), kwargs = hub.upload_dataset.call_args
    assert kwargs == {"name": "val-inputs"}
    assert all(np.array_equal(a, b) for a, b in zip(uploaded["image"], data, strict=True))
    hub.submit_inference_job.assert_called_once_with(
        model=target,
        device=hub.Device.return_value,
        inputs=hub.upload_dataset.return_value,
        name="val",
        options="",
        retry=False,
        profile=False,
    )
    hub.submit_profile_job.assert_not_called()


def test_submit_link_of_a_dlc_compile_job_and_a_dlc_file(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    dlc_job = make_job(qai_hub.CompileJob, "jcomp0011")
    dlc = mock.create_autospec(qai_hub.Model, instance=True)
    dlc.model_type = qai_hub.SourceModelType.QNN_DLC
    dlc_job.get_target_model.return_value = dlc
    tflite_job = make_job(qai_hub.CompileJob, "jcomp0012")
    tflite = mock.create_autospec(qai_hub.Model, instance=True)
    tflite.model_type = qai_hub.SourceModelType.TFLITE
    tflite_job.get_target_model.return_value = tflite
    register_jobs(hub, dlc_job, tflite_job)
    hub.submit_link_job.return_value = make_job(qai_hub.LinkJob, "jlink0001")
    local_dlc = tmp_path / "second.dlc"
    local_dlc.write_bytes(b"dlc bytes")

    job_id = client.submit_link(["jcomp0011", local_dlc], "Samsung Galaxy S23", name="both",
                                options=" --qnn_options x=1 ")

    assert job_id == "jlink0001"
    hub.upload_model.assert_called_once_with(str(local_dlc), name="second.dlc")
    hub.submit_link_job.assert_called_once_with(
        models=[dlc, hub.upload_model.return_value],
        device=hub.Device.return_value,
        name="both",
        options="--qnn_options x=1",
    )
    with pytest.raises(StageError, match="link jobs take QNN DLC models"):
        client.submit_link(["jcomp0012"], "Samsung Galaxy S23")
    with pytest.raises(StageError, match="link jobs cannot take"):
        client.submit_link([tiny_onnx(tmp_path / "net.onnx")], "Samsung Galaxy S23")
    assert hub.submit_link_job.call_count == 1


def test_submit_inference_profile_without_inputs(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    tflite = tmp_path / "net.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(32))
    hub.submit_inference_job.return_value = make_job(qai_hub.InferenceJob, "jprof00001")
    device = DeviceInfo("Samsung Galaxy S23", "14")
    assert client.submit_inference(tflite, device, profile=True, name="p") == "jprof00001"
    hub.upload_model.assert_called_once_with(str(tflite), name="net.tflite")
    hub.upload_dataset.assert_not_called()
    hub.submit_inference_job.assert_called_once_with(
        model=hub.upload_model.return_value,
        device=hub.Device.return_value,
        inputs=None,
        name="p",
        options="",
        retry=False,
        profile=True,
    )
    with pytest.raises(StageError, match="needs inputs"):
        client.submit_inference(tflite, device, profile=False)


def test_submit_inference_refuses_models_that_need_compiling(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    device = DeviceInfo("Samsung Galaxy S23", "14")
    with pytest.raises(StageError, match="inference jobs cannot take"):
        client.submit_inference(make_aimet_dir(tmp_path / "a.aimet"), device, profile=True)
    with pytest.raises(StageError, match="inference jobs cannot take"):
        client.submit_inference(make_pt2(tmp_path / "n.pt2"), device, profile=True)

    profile_job = make_job(qai_hub.InferenceJob, "jinfer0002")
    failed_compile = make_job(qai_hub.CompileJob, "jcomp0006", ("FAILED",), "bad op")
    failed_compile.get_target_model.return_value = None
    register_jobs(hub, profile_job, failed_compile)
    with pytest.raises(StageError, match="produces no model"):
        client.submit_inference("jinfer0002", device, profile=True)
    with pytest.raises(StageError, match=r"has no target model.*jobs/jcomp0006/"):
        client.submit_inference("jcomp0006", device, profile=True)
    hub.submit_inference_job.assert_not_called()


# --------------------------------------------------------------------------- waiting


def test_wait_for_mixed_success_and_failure(
    client: AIHubClient, hub: Any, sleeps: Sleeps
) -> None:
    ok = make_job(
        qai_hub.CompileJob,
        "jaaaa0001",
        ("CREATED", "OPTIMIZING_MODEL", "OPTIMIZING_MODEL", "SUCCESS"),
    )
    bad = make_job(
        qai_hub.InferenceJob,
        "jbbbb0002",
        ("CREATED", "FAILED"),
        "Failed to run: op 'Foo' is not supported",
    )
    register_jobs(hub, ok, bad)
    events: list[tuple[str, str, str]] = []

    outcomes = client.wait_for(["jaaaa0001", "jbbbb0002"], lambda *e: events.append(e))

    url_ok, url_bad = f"{WEB_URL}/jobs/jaaaa0001/", f"{WEB_URL}/jobs/jbbbb0002/"
    assert events == [
        ("jaaaa0001", "CREATED", url_ok),
        ("jbbbb0002", "CREATED", url_bad),
        ("jaaaa0001", "OPTIMIZING_MODEL", url_ok),
        ("jbbbb0002", "FAILED", url_bad),
        ("jaaaa0001", "SUCCESS", url_ok),
    ]
    assert list(outcomes) == ["jaaaa0001", "jbbbb0002"]
    assert outcomes["jaaaa0001"] == JobOutcome("jaaaa0001", "SUCCESS", url_ok, "")
    assert outcomes["jbbbb0002"] == JobOutcome(
        "jbbbb0002", "FAILED", url_bad, "Failed to run: op 'Foo' is not supported"
    )
    assert outcomes["jaaaa0001"].success and not outcomes["jbbbb0002"].success
    assert json.loads(json.dumps(outcomes["jbbbb0002"].to_dict()))["success"] is False
    assert sleeps == [5.0, 5.0, 5.0]  # an unchanged status is polled but not reported
    assert ok.get_status.call_count == 4 and bad.get_status.call_count == 2
    ok.wait.assert_not_called()  # qai_hub's wait() sleeps on its own clock


def test_wait_for_unknown_job_and_timeout(client: AIHubClient, hub: Any, sleeps: Sleeps) -> None:
    slow = make_job(qai_hub.CompileJob, "jslow00001", ("OPTIMIZING_MODEL",))
    register_jobs(hub, slow)
    outcomes = client.wait_for(["jslow00001", "jgone00001"], None, timeout_s=12)
    assert outcomes["jgone00001"].status == "ERROR"
    assert "could not be found" in outcomes["jgone00001"].message
    assert outcomes["jgone00001"].url == f"{WEB_URL}/jobs/jgone00001/"
    assert outcomes["jslow00001"].status == "TIMEOUT"
    assert "still OPTIMIZING_MODEL after waiting 15 s" in outcomes["jslow00001"].message
    assert sleeps == [5.0, 5.0, 5.0]


# --------------------------------------------------------------------------- retries


def test_transient_errors_are_retried_with_backoff(
    client: AIHubClient, hub: Any, sleeps: Sleeps, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    hub.submit_compile_job.side_effect = [
        InternalError("Internal API failure. Could not connect to Qualcomm AI Hub."),
        RateLimitedError("Too Many Requests"),
        requests.exceptions.ConnectionError("connection reset"),
        APIException(status_code=503),
        make_job(qai_hub.CompileJob, "jcomp0007"),
    ]
    job_id = client.submit_compile(model, DeviceInfo("Samsung Galaxy S23", "14"), "tflite")
    assert job_id == "jcomp0007"
    assert hub.submit_compile_job.call_count == 5
    assert sleeps == [2.0, 20.0, 8.0, 16.0]  # rate limits wait at least 20 s
    assert hub.upload_model.call_count == 1  # the upload is not redone


def test_retries_are_bounded_then_stage_error(
    client: AIHubClient, hub: Any, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    hub.get_devices.side_effect = InternalError("Qualcomm AI Hub is unavailable right now.")
    with (
        caplog.at_level(logging.WARNING, logger="buildsys.backends.aihub"),
        pytest.raises(StageError) as err,
    ):
        client.resolve_device("Samsung Galaxy S23")
    assert "failed after 5 attempts" in str(err.value)
    assert "unavailable right now" in str(err.value)
    assert hub.get_devices.call_count == 5
    assert sleeps == [2.0, 4.0, 8.0, 16.0]
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 4


OFFLINE_API_URL = "https://aihub.invalid"  # RFC 2606: a name that never resolves


def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_no_network_fails_at_once_not_after_minutes_of_retries(
    home: Path, hub: Any, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_proxy(monkeypatch)
    write_config(home / ".qai_hub" / "client.ini", "[api]\n"
                 f"api_token = {FAKE_TOKEN}\napi_url = {OFFLINE_API_URL}\nweb_url = {WEB_URL}\n")
    with pytest.raises(StageError) as err:
        AIHubClient(hub, sleep=sleeps).resolve_device("Samsung Galaxy S23")
    message = str(err.value)
    assert "aihub.invalid does not resolve" in message and "--offline" in message
    assert FAKE_TOKEN not in message
    assert hub.get_devices.call_count == 0 and sleeps == []  # not one call, not one wait


def test_a_network_lost_mid_build_stops_the_retries(
    home: Path, hub: Any, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home / ".qai_hub" / "client.ini", "[api]\n"
                 f"api_token = {FAKE_TOKEN}\napi_url = {OFFLINE_API_URL}\nweb_url = {WEB_URL}\n")
    # Through a proxy the name is the proxy's to resolve: no verdict of ours, the call goes out.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    client = AIHubClient(hub, sleep=sleeps)
    assert client.resolve_device("Samsung Galaxy S23").name == "Samsung Galaxy S23"
    # Then the proxy is gone and the host does not resolve: a failed connection is not retried.
    _no_proxy(monkeypatch)
    hub.get_devices.side_effect = requests.exceptions.ConnectionError("Name or service not known")
    with pytest.raises(StageError, match=r"aihub\.invalid does not resolve"):
        client.resolve_device("Samsung Galaxy S24")
    assert sleeps == []


def test_user_errors_are_not_retried(
    client: AIHubClient, hub: Any, sleeps: Sleeps, tmp_path: Path
) -> None:
    model = tiny_onnx(tmp_path / "net.onnx")
    hub.submit_compile_job.side_effect = UserError("Input model type cannot be compiled.")
    with pytest.raises(StageError, match="rejected submitting a compile job: Input model type"):
        client.submit_compile(model, DeviceInfo("Samsung Galaxy S23", "14"), "tflite")
    assert hub.submit_compile_job.call_count == 1
    assert sleeps == []


# --------------------------------------------------------------------------- token


def test_missing_token_fails_fast_without_touching_the_hub(home: Path, sleeps: Sleeps) -> None:
    hub = mock.create_autospec(qai_hub)
    with pytest.raises(StageError) as err:
        check_token(hub)
    message = str(err.value)
    assert CONFIGURE_HINT in message
    assert str(home / ".qai_hub" / "client.ini") in message

    client = AIHubClient(hub, sleep=sleeps)
    device = DeviceInfo("Samsung Galaxy S23", "14")
    for call in (
        lambda: client.resolve_device("Samsung Galaxy S23"),
        lambda: client.submit_compile("jcomp0001", device, "tflite"),
        lambda: client.submit_inference("jcomp0001", device, profile=True),
        lambda: client.wait_for(["jcomp0001"], None),
        lambda: client.download_profile("jinfer0001"),
    ):
        with pytest.raises(StageError, match="qai-hub configure --api_token <your token>"):
            call()
    assert hub.mock_calls == []  # no network call was even attempted
    assert sleeps == []


def test_config_location_matches_qai_hub(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qai_hub.api_utils import get_config_path

    assert aihub.config.config_path() == Path(get_config_path())
    custom = home / "elsewhere" / "hub.ini"
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(custom))
    assert aihub.config.config_path() == Path(get_config_path()) == custom
    with pytest.raises(StageError, match=CONFIGURE_HINT.replace("<", ".").replace(">", ".")):
        check_token()
    write_config(custom)
    check_token()  # configured through the environment variable: passes


def test_incomplete_config_names_the_missing_keys(home: Path) -> None:
    write_config(home / ".qai_hub" / "client.ini", f"[api]\napi_token = {FAKE_TOKEN}\n")
    with pytest.raises(StageError) as err:
        check_token()
    assert "has no api_url, web_url in [api]" in str(err.value)
    assert CONFIGURE_HINT in str(err.value)
    assert FAKE_TOKEN not in str(err.value)


def test_real_qai_hub_errors_map_to_the_configure_message(
    home: Path, hub: Any, sleeps: Sleeps
) -> None:
    # The real client with no configuration fails locally, before any network access.
    with pytest.raises(UserError) as real:
        qai_hub.get_devices()
    assert "configuration" in str(real.value)
    with pytest.raises(UserError) as unauthorized:
        _raise_if_hub_user_error(APIException(status_code=401, url="https://x/api/v1/devices/"))

    write_config(home / ".qai_hub" / "client.ini")
    client = AIHubClient(hub, sleep=sleeps)
    for exc in (real.value, unauthorized.value):
        hub.get_devices.side_effect = exc
        with pytest.raises(StageError) as err:
            client.resolve_device("Samsung Galaxy S23")
        assert CONFIGURE_HINT in str(err.value)
    assert sleeps == []


def test_token_never_appears_anywhere(
    client: AIHubClient,
    hub: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    texts: list[str] = []

    def collect(exc: BaseException) -> None:
        texts.append(str(exc))
        texts.append("".join(traceback.format_exception(exc)))

    caplog.set_level(logging.DEBUG, logger="buildsys.backends.aihub")
    client.check_token()
    texts.append(repr(client))

    # errors carrying the token, transient (retried, logged) and final
    hub.get_devices.side_effect = InternalError(f"upstream said token {FAKE_TOKEN} is slow")
    with pytest.raises(StageError) as err:
        client.resolve_device("Samsung Galaxy S23")
    collect(err.value)
    hub.get_devices.side_effect = UserError(f"Bad request for {FAKE_TOKEN}")
    with pytest.raises(StageError) as err:
        client.list_devices(["os:android"])
    collect(err.value)
    hub.get_devices.side_effect = UserError(f"Failed to authenticate with {FAKE_TOKEN}")
    with pytest.raises(StageError) as err:
        client.resolve_device("Samsung Galaxy S23")
    collect(err.value)

    # qai_hub printing the token to stdout during a call
    def chatty(**kwargs: Any) -> list[Any]:
        print(f"Loaded config with api_token={FAKE_TOKEN}")
        return fake_get_devices(**kwargs)

    hub.get_devices.side_effect = chatty
    cache = tmp_path / "devices.json"
    devices = client.list_devices(None, cache_path=cache, now=1.0)
    texts.append(json.dumps([d.to_dict() for d in devices]))
    texts.append(cache.read_text(encoding="utf-8"))

    # a failure message and a URL carrying the token
    bad = make_job(qai_hub.CompileJob, "jbad000001", ("FAILED",), f"denied for {FAKE_TOKEN}")
    bad.url = f"{WEB_URL}/jobs/jbad000001/?t={FAKE_TOKEN}"
    register_jobs(hub, bad)
    events: list[tuple[str, str, str]] = []
    outcome = client.wait_for(["jbad000001"], lambda *e: events.append(e))["jbad000001"]
    texts += [json.dumps(outcome.to_dict()), repr(outcome), repr(events)]
    with pytest.raises(StageError) as err:
        client.download_compiled("jbad000001", tmp_path / "out")
    collect(err.value)

    # config files the parser cannot read must not be quoted
    ini = Path(os.environ["HOME"]) / ".qai_hub" / "client.ini"
    for body in (
        f"api_token = {FAKE_TOKEN}\n",  # no section header: configparser quotes the line
        f"[api]\napi_token = %{FAKE_TOKEN}\napi_url = u\nweb_url = w\n",  # bad interpolation
    ):
        write_config(ini, body)
        with pytest.raises(StageError) as err:
            check_token()
        collect(err.value)

    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    texts += [r.getMessage() for r in caplog.records]
    assert any("<redacted>" in r.getMessage() for r in caplog.records)  # it was logged, redacted
    assert len(texts) > 15
    leaks = [t for t in texts if FAKE_TOKEN in t]
    assert leaks == []


# --------------------------------------------------------------------------- AIMET directories


def test_valid_aimet_directory(tmp_path: Path) -> None:
    model_dir = validate_aimet_dir(make_aimet_dir(tmp_path / "net.aimet"))
    assert (model_dir.onnx, model_dir.data, model_dir.encodings) == (
        "net.onnx",
        "net.data",
        "net.encodings",
    )
    assert model_dir.kind == "aimet_onnx"


def test_aimet_directory_problems_are_named(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    tiny_onnx(plain / "net.onnx", external="net.data")
    assert validate_model_dir(plain).kind == "onnx_dir"
    with pytest.raises(StageError, match=re.escape("has no .encodings file")):
        validate_aimet_dir(plain)

    two = make_aimet_dir(tmp_path / "two.aimet")
    tiny_onnx(two / "other.onnx")
    found = "exactly one .onnx file (found: net.onnx, other.onnx)"
    with pytest.raises(StageError, match=re.escape(found)):
        validate_aimet_dir(two)

    extra = make_aimet_dir(tmp_path / "extra.aimet")
    (extra / "README.txt").write_text("hi", encoding="utf-8")
    (extra / "sub").mkdir()
    with pytest.raises(StageError, match=re.escape("contains README.txt, sub")):
        validate_aimet_dir(extra)

    two_enc = make_aimet_dir(tmp_path / "enc2.aimet")
    (two_enc / "b.encodings").write_text("{}", encoding="utf-8")
    with pytest.raises(StageError, match=r"at most one \.encodings file"):
        validate_aimet_dir(two_enc)

    bad_json = make_aimet_dir(tmp_path / "json.aimet")
    (bad_json / "net.encodings").write_text("{oops", encoding="utf-8")
    with pytest.raises(StageError, match=re.escape("net.encodings is not valid JSON")):
        validate_aimet_dir(bad_json)

    renamed = make_aimet_dir(tmp_path / "renamed.aimet")
    (renamed / "net.data").rename(renamed / "weights.data")
    expected = "stores weights in net.data, but the directory has weights.data"
    with pytest.raises(StageError, match=re.escape(expected)):
        validate_aimet_dir(renamed)

    with pytest.raises(StageError, match="does not exist"):
        validate_aimet_dir(tmp_path / "missing.aimet")


# --------------------------------------------------------------------------- downloads


def writes(name: str, payload: bytes) -> Callable[[str], str]:
    """A download_target_model side effect that behaves like qai_hub given a directory."""

    def download(filename: str) -> str:
        target = Path(filename) / name
        target.write_bytes(payload)
        return str(target)

    return download


def test_download_compiled_lands_atomically(
    client: AIHubClient, hub: Any, tmp_path: Path, sleeps: Sleeps
) -> None:
    job = make_job(qai_hub.CompileJob, "jcomp0008")
    attempts: list[str] = []

    def flaky(filename: str) -> str:
        attempts.append(filename)
        if len(attempts) == 1:
            (Path(filename) / "job_jcomp0008_optimized.tflite").write_bytes(b"half")
            raise requests.exceptions.ConnectionError("reset mid-download")
        return writes("job_jcomp0008_optimized.tflite", b"TFL3 full model")(filename)

    job.download_target_model.side_effect = flaky
    register_jobs(hub, job)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "model.tflite").write_bytes(b"stale")

    path = client.download_compiled("jcomp0008", dest)

    assert path == dest / "model.tflite"
    assert path.read_bytes() == b"TFL3 full model"
    assert sorted(p.name for p in dest.iterdir()) == ["model.tflite"]  # no temp leftovers
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert all(Path(a).parent.parent == dest for a in attempts)  # temp dirs inside dest_dir
    assert sleeps == [2.0]


def test_download_compiled_zip_directory_model(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    job = make_job(qai_hub.CompileJob, "jcomp0009")

    def download(filename: str) -> str:
        target = Path(filename) / "job_jcomp0009.onnx.zip"
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("job_jcomp0009.onnx/model.onnx", b"onnx")
            archive.writestr("job_jcomp0009.onnx/model.bin", b"ctx")
        return str(target)

    job.download_target_model.side_effect = download
    register_jobs(hub, job)
    path = client.download_compiled("jcomp0009", tmp_path / "out", stem="ffnet")
    assert path == tmp_path / "out" / "ffnet"
    assert sorted(p.name for p in path.iterdir()) == ["model.bin", "model.onnx"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ffnet"]


def test_download_of_failed_or_running_job_writes_nothing(
    client: AIHubClient, hub: Any, tmp_path: Path
) -> None:
    failed = make_job(qai_hub.CompileJob, "jfail00001", ("FAILED",), "Compilation failed")
    running = make_job(qai_hub.CompileJob, "jrun000001", ("OPTIMIZING_MODEL",))
    register_jobs(hub, failed, running)
    dest = tmp_path / "out"
    with pytest.raises(StageError, match=r"failed \(Compilation failed\); see .*/jobs/jfail00001/"):
        client.download_compiled("jfail00001", dest)
    with pytest.raises(StageError, match="still OPTIMIZING_MODEL"):
        client.download_compiled("jrun000001", dest)
    failed.download_target_model.assert_not_called()
    running.download_target_model.assert_not_called()
    assert not dest.exists() or list(dest.iterdir()) == []


def test_download_quantized_qdq_onnx(client: AIHubClient, hub: Any, tmp_path: Path) -> None:
    job = make_job(qai_hub.QuantizeJob, "jquant0002")
    job.download_target_model.side_effect = writes("job_jquant0002.onnx", b"qdq")
    register_jobs(hub, job)
    path = client.download_quantized("jquant0002", tmp_path / "q")
    assert path == tmp_path / "q" / "model.onnx"
    assert path.read_bytes() == b"qdq"


def real_profile() -> dict[str, Any]:
    """A profile dict produced by qai_hub's own converter from the service's protobuf."""
    units = [pb.COMPUTE_UNIT_NPU, pb.COMPUTE_UNIT_NPU, pb.COMPUTE_UNIT_GPU, pb.COMPUTE_UNIT_CPU]
    detail = pb.ProfileDetail(
        major_version=1,
        minor_version=2,
        execution_time=12_345,  # microseconds
        after_execution_peak_memory=30_000_000,
        cold_load_time=900_000,
        warm_load_time=200_000,
        execution_memory=pb.ProfileDetail.MemoryUsage(
            peak=pb.Range(lower=11_000_000, upper=25_600_000),
            increase=pb.Range(lower=0, upper=1_000_000),
        ),
        layer_details=[
            pb.LayerDetail(name=f"op{i}", layer_type_name="Conv2d", compute_unit=u)
            for i, u in enumerate(units)
        ],
    )
    return _profile_pb_to_python_dict(detail)


def test_download_profile_summary(client: AIHubClient, hub: Any) -> None:
    job = make_job(qai_hub.InferenceJob, "jprof00002")
    job.download_profile.return_value = real_profile()
    register_jobs(hub, job)
    summary = client.download_profile("jprof00002")
    job.download_profile.assert_called_once_with()
    assert summary == {
        "estimated_inference_time_ms": 12.345,
        "peak_memory_range_mb": [11, 26],
        "peak_memory_range_bytes": [11_000_000, 25_600_000],
        "compute_unit_ops": {"NPU": 2, "GPU": 1, "CPU": 1},
        "total_ops": 4,
        "first_load_time_ms": 900.0,
        "warm_load_time_ms": 200.0,
    }
    assert json.loads(json.dumps(summary)) == summary

    job.download_profile.return_value = {}
    with pytest.raises(StageError, match="profile=True"):
        client.download_profile("jprof00002")
    compile_job = make_job(qai_hub.CompileJob, "jcomp0010")
    register_jobs(hub, compile_job)
    with pytest.raises(StageError, match="not an inference job"):
        client.download_profile("jcomp0010")


def test_summarize_profile_without_memory_ranges() -> None:
    profile = {
        "execution_summary": {
            "estimated_inference_time": 50,
            "estimated_inference_peak_memory": 2_000_000,
        },
        "execution_detail": [{"compute_unit": "CPU"}],
    }
    summary = summarize_profile(profile)
    assert summary["estimated_inference_time_ms"] == 0.05
    assert summary["peak_memory_range_mb"] == [2, 2]
    assert summary["compute_unit_ops"] == {"NPU": 0, "GPU": 0, "CPU": 1}


def test_download_outputs(client: AIHubClient, hub: Any) -> None:
    job = make_job(qai_hub.InferenceJob, "jinfer0003")
    outputs = {"logits": [np.arange(6, dtype=np.float32).reshape(1, 6), np.ones((1, 6))]}
    job.download_output_data.return_value = outputs
    register_jobs(hub, job)
    got = client.download_outputs("jinfer0003")
    job.download_output_data.assert_called_once_with()
    assert list(got) == ["logits"]
    assert all(np.array_equal(a, b) for a, b in zip(got["logits"], outputs["logits"], strict=True))

    job.download_output_data.return_value = None
    with pytest.raises(StageError, match="no output data"):
        client.download_outputs("jinfer0003")
