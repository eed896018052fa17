"""The unit the planner and executor deal in: one stage of work, named and typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FileRef:
    """A source file of the project, entering the key by content digest."""

    path: Path


@dataclass(frozen=True)
class OutputRef:
    """An output file of another stage."""

    stage: str
    name: str


InputRef = FileRef | OutputRef


@dataclass
class StageNode:
    id: str
    kind: str
    params: dict[str, Any]
    inputs: dict[str, InputRef] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # declared output files; a stage may write more
    timeout: float | None = None
    publish: bool = False  # also place the outputs in the recipe's release folder
    labels: dict[str, str] = field(default_factory=dict)  # model/quantization/target/device
    # Outputs that are measurements (timings): recorded, but not part of the lock's
    # reproducibility check, since no two runs time the same.
    measurements: tuple[str, ...] = ()

    def upstream(self) -> set[str]:
        return {ref.stage for ref in self.inputs.values() if isinstance(ref, OutputRef)}
