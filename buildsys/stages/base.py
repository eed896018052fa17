"""What a stage is: a pure function from (parameters, input files, tool versions) to output files.

A stage class declares its kind, its implementation version (bump it when the code changes what
it produces) and the distributions whose versions enter its key. Its `run` receives a
`StageContext` and writes files into `ctx.out_dir`; whatever it returns is recorded as metrics.
Stage modules import heavy libraries inside `run` only: the planner imports every stage module.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from buildsys.errors import StageError
from buildsys.numerics import ORT_KERNELS, SIMD_KERNELS


class CheckFailed(StageError):
    """A numeric check failed: the stage ran fine but its figures miss a recipe threshold."""

    def __init__(self, message: str, metrics: dict[str, Any]) -> None:
        super().__init__(message)
        self.metrics = metrics


@dataclass
class StageContext:
    stage_id: str
    params: dict[str, Any]
    inputs: dict[str, Path]
    out_dir: Path
    work_dir: Path
    threads: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    # Where `status` writes; the executor shows it next to the running stage.
    status_path: Path | None = None

    def input(self, name: str) -> Path:
        try:
            return self.inputs[name]
        except KeyError:
            raise StageError(f"{self.stage_id}: missing input {name!r}") from None

    def output(self, name: str) -> Path:
        path = self.out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def remember(self, name: str, value: Any) -> None:
        """Record a small value under this stage's key at once, e.g. a remote job id, so an
        interrupted build, re-run, resumes the same job instead of submitting a new one.

        The executor hands over a machine-local directory for this key (`memo_dir`); without
        one (a stage run by hand) nothing is kept."""
        memo = self._memo_path(name)
        if memo is None:
            return
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(value, sort_keys=True))
        os.replace(tmp, memo)

    def recall(self, name: str) -> Any:
        """A value remembered by an earlier, interrupted run of this same stage key."""
        memo = self._memo_path(name)
        if memo is None:
            return None
        try:
            return json.loads(memo.read_text())
        except (FileNotFoundError, ValueError):  # never remembered, or cut off mid-write
            return None

    def _memo_path(self, name: str) -> Path | None:
        if "memo_dir" not in self.extras:
            return None
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise StageError(f"{self.stage_id}: cannot remember {name!r}: not a plain name")
        return Path(self.extras["memo_dir"]) / f"{name}.json"

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def status(self, text: str) -> None:
        """One line saying what the stage is waiting for now (e.g. a remote job's status and
        link), shown by the progress display while the stage runs. Not part of any output."""
        if self.status_path is None:
            return
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        tmp.write_text(" ".join(text.split()))
        os.replace(tmp, self.status_path)


class Stage:
    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    tools: ClassVar[tuple[str, ...]] = ()
    # Threads this stage can use well; the executor caps it by its per-worker budget.
    max_threads: ClassVar[int] = 1
    # Built only when asked for: a stage that consumes its outputs, or a pattern naming it
    # (its last part without wildcards, e.g. '*/capture'); a default build leaves it out.
    on_demand: ClassVar[bool] = False
    # Packaging records which stage keys made its inputs; those keys then enter its own key.
    wants_upstream_keys: ClassVar[bool] = False
    # The stage mostly waits on a remote service (AI Hub): it runs outside the local -j
    # budget, so all independent remote jobs are submitted at once and awaited together.
    remote: ClassVar[bool] = False
    # The stage needs hardware this machine may lack (a GPU): `unavailable` says so at plan
    # time and the stage fails there, without running (plan/hardware.py).
    needs_hardware: ClassVar[bool] = False
    # The files every stage of this kind writes (more may be written); `outputs` may vary them
    # by parameters. Downstream stages and the planner name them through the stage class only.
    output_files: ClassVar[tuple[str, ...]] = ()
    # Outputs that are measurements (timings): recorded, not part of the lock's
    # reproducibility check, since no two runs time the same.
    measurement_files: ClassVar[tuple[str, ...]] = ()
    # Metrics (keys of what `run` returns) also written into the lock beside the digests,
    # for whoever reads the lock (e.g. the rung `quantization: auto` chose). Not checked.
    lock_notes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def outputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """The files a stage of this kind with these parameters promises to write."""
        return cls.output_files

    @classmethod
    def tool_names(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """Distributions whose versions change this stage's output (may depend on params)."""
        return cls.tools

    @classmethod
    def resources(cls, params: dict[str, Any]) -> dict[str, float]:
        """What a worker of a cluster must advertise to run this stage, beyond its tools:
        `htp_sim` (the QNN HTP simulator), `aihub` (AI Hub token and network), `memory`
        (bytes). A worker without them never gets the stage (`--scheduler`)."""
        return {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Why stages of this kind cannot run from here (e.g. a remote service without a
        token or network), asked once per build before anything runs; None when they can."""
        return None

    @classmethod
    def requirements(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """Distributions this stage imports when it runs; the planner fails a build that
        needs one that is not installed, naming the extra to install (see toolchain.py)."""
        return tuple(name for name in cls.tool_names(params)
                     if name not in ("python", ORT_KERNELS, *SIMD_KERNELS))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError
