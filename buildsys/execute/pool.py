"""What the executor's scheduler hands a worker pool, and what it gets back: plain data.

The scheduler (runner.py) decides what is ready, in what order, what is cached; a pool only
runs stages. A job names its inputs by digest and carries the ingredients its key promised
(kind, implementation version, parameters, input digests, tool versions): no live objects, no
paths of the coordinator, so it can travel to another machine as JSON. The result names the
outputs by digest: the pool has put them in a store the coordinator can read (its own store
for the local pool, the shared remote cache for the Dask pool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from buildsys.store.record import OutputEntry, StageRecord, new_record


@dataclass
class StageJob:
    stage_id: str
    key: str
    # kind, version, params (as keyed), inputs {name: digest}, tools {distribution: version}
    ingredients: dict[str, Any]
    inputs: dict[str, str]  # input name -> where it lies in the stage's scratch directory
    shown: dict[str, str]  # input name -> how an error names it (the user's file, not a copy)
    outputs: list[str]  # declared outputs: a stage that does not write one fails
    max_threads: int = 1
    timeout: float | None = None
    # What a worker must have to run it (`Stage.resources`): htp_sim, aihub, memory (bytes).
    resources: dict[str, float] = field(default_factory=dict)
    sys_path: list[str] = field(default_factory=list)  # where user model code is importable
    remote: bool = False  # waits on a service (AI Hub) rather than computing

    @property
    def kind(self) -> str:
        return str(self.ingredients["kind"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageJob:
        return cls(**data)


@dataclass
class StageResult:
    ok: bool
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    check_failed: bool = False
    outputs: dict[str, OutputEntry] = field(default_factory=dict)  # name -> digest, size
    log: str = ""  # the whole log; the record keeps its tail
    duration_s: float = 0.0
    worker: str | None = None  # which worker ran it (shown in progress and the report)
    # False when the stage never started there (no such worker, refused, lost): retrying
    # elsewhere may help; True once it ran and its own outcome is known.
    ran: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(**data)


LOG_TAIL = 20_000


def make_record(job: StageJob, result: StageResult) -> StageRecord:
    """The record stored under the job's key: the same wherever the stage ran."""
    return new_record(job.stage_id, job.kind, job.key, job.ingredients, result.outputs,
                      result.metrics or {}, result.duration_s, result.log[-LOG_TAIL:])


class WorkerPool(Protocol):
    """Where stages run. `run` blocks (the executor calls it from one thread per running
    stage) and reports a failed stage in its result; it raises only for the pool itself."""

    name: str

    def capacity(self) -> int:
        """How many stages it runs at once (the executor starts no more)."""
        ...

    def provide(self, digest: str, label: str) -> bool:
        """Make an input blob reachable for the pool's workers; False when it cannot be had."""
        ...

    def run(self, job: StageJob, slot: int | None) -> StageResult: ...

    def keep(self, record: StageRecord, measurements: tuple[str, ...],
             needed_here: bool) -> bool:
        """Store a finished stage's result for the coordinator (blobs first, record last);
        True when its outputs are in the coordinator's store. A pool whose stages left their
        outputs elsewhere brings them here only when `needed_here` (published, or a leaf)."""
        ...

    def placement(self) -> dict[str, str]:
        """Running stage id -> the worker running it, where the pool knows it."""
        ...

    def cancel_all(self) -> None:
        """Stop every stage of this build now (Ctrl-C, a failure without --keep-going)."""
        ...

    def close(self) -> None: ...
