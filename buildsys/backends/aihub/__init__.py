"""Qualcomm AI Hub backend: resolve devices, submit compile/quantize/link/inference jobs, wait
for them, download their results. One idea per module:

- ``config``  — the qai_hub configuration and API token, read without network access
- ``network`` — is AI Hub's host reachable at all (answered in a fraction of a second)
- ``errors``  — what a failed qai_hub call means: token, rejected, or transient (retried)
- ``models``  — what may be sent, checked locally: model files/directories, datasets, specs
- ``devices`` — a device as plain data, and the one-day cache of device lists
- ``device_table`` — `modelbuild devices`: the table of devices a recipe can name
- ``jobs``    — job ids and how a job ended
- ``profile`` — an inference job's profile, summarised as Qualcomm's export scripts print it
- ``files``   — atomic writes and moves (no half-written artifact under its final name)
- ``client``  — ``AIHubClient``: every qai_hub call (bounded retries, token redacted), one
  submit path, polling, downloads

Rules the package keeps:

* Fail fast without network when no API token is configured, telling the user to run
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

from buildsys.backends.aihub.client import TARGET_RUNTIMES, AIHubClient
from buildsys.backends.aihub.config import (
    DEFAULT_CONFIG_PATH,
    TOKEN_HELP,
    check_reachable,
    check_token,
)
from buildsys.backends.aihub.devices import DEVICE_CACHE_TTL_S, DeviceInfo
from buildsys.backends.aihub.jobs import JobOutcome
from buildsys.backends.aihub.models import (
    SUPPORTED_TENSOR_DTYPES,
    ModelDir,
    validate_aimet_dir,
    validate_model_dir,
)
from buildsys.backends.aihub.profile import summarize_profile

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
