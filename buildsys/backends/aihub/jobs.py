"""AI Hub jobs as the build sees them: their ids and how each ended."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

# AI Hub job ids: "j" followed by lowercase letters and digits (e.g. "jgdq2e8zp").
JOB_ID_RE = re.compile(r"j[0-9a-z]{5,24}")


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
