"""The build as it happened: which stage ran when, for how long, on which worker, and what
came from the cache — from the JSON build report (`--report`, or the last one the build kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUILT, CACHED, FETCHED, FAILED, SKIPPED = "built", "cached", "fetched", "failed", "skipped"


@dataclass(frozen=True)
class StageRun:
    id: str
    kind: str
    origin: str  # built | cached | fetched (from a remote cache) | failed | skipped
    reason: str
    started_s: float | None  # after execution began; None when unknown
    duration_s: float  # in this build (a cache hit takes ~0)
    worker: str | None
    built_in_s: float | None  # what building it took, when it was built (cache hits)


@dataclass
class Timeline:
    recipe: str
    started_at: str | None
    wall_time_s: float | None
    runs: list[StageRun]
    from_records: bool = False  # no build report: durations from the store's records only

    def count(self, origin: str) -> int:
        return sum(1 for r in self.runs if r.origin == origin)

    @property
    def hit_ratio(self) -> float | None:
        """Cache hits (local or remote) among the stages the build needed."""
        hits = self.count(CACHED) + self.count(FETCHED)
        needed = hits + self.count(BUILT) + self.count(FAILED)
        return hits / needed if needed else None

    @property
    def saved_s(self) -> float:
        """Stage time the cache saved: what the hits took when they were built."""
        return sum(r.built_in_s or 0.0 for r in self.runs if r.origin in (CACHED, FETCHED))

    @property
    def stage_time_s(self) -> float:
        return sum(r.duration_s for r in self.runs if r.origin in (BUILT, FAILED))

    def slowest(self, n: int = 10) -> list[StageRun]:
        ran = [r for r in self.runs if r.origin in (BUILT, FAILED)]
        if self.from_records:
            ran = [r for r in self.runs if r.built_in_s]
            return sorted(ran, key=lambda r: -(r.built_in_s or 0))[:n]
        return sorted(ran, key=lambda r: -r.duration_s)[:n]


def stage_kind(stage_id: str) -> str:
    """Stage ids end with their kind (…/w8a8/quantize); datasets are data/<name>/<split>."""
    if stage_id.startswith("data/"):
        return "dataset"
    if stage_id == "release/index":
        return "release"
    if stage_id.startswith("steps/"):
        return "command"
    return stage_id.rsplit("/", 1)[-1]


def origin_of(stage: dict[str, Any]) -> str:
    """A remote-cache hit may be reported as its own status or as a cache hit whose reason
    names the remote (the remote cache tier decides; both read as fetched)."""
    status = str(stage.get("status", ""))
    reason = str(stage.get("reason", "")).lower()
    if status == FETCHED or "remote" in status or (status == CACHED and "remote" in reason):
        return FETCHED
    return status if status in (BUILT, CACHED, FAILED, SKIPPED) else SKIPPED


def from_build_report(report: dict[str, Any]) -> Timeline:
    runs = [StageRun(id=s["id"], kind=stage_kind(s["id"]), origin=origin_of(s),
                     reason=str(s.get("reason") or ""), started_s=s.get("started_s"),
                     duration_s=float(s.get("duration_s") or 0.0), worker=s.get("worker"),
                     built_in_s=s.get("built_in_s"))
            for s in report.get("stages", [])]
    return Timeline(recipe=report.get("recipe", ""), started_at=report.get("started_at"),
                    wall_time_s=report.get("wall_time_s"), runs=runs)


def from_records(recipe: str, records: dict[str, dict[str, Any]]) -> Timeline:
    """No build report kept: each stage's last record says how long it took when built."""
    runs = [StageRun(id=sid, kind=stage_kind(sid), origin=CACHED, reason="from the store",
                     started_s=None, duration_s=0.0, worker=None,
                     built_in_s=rec.get("duration_s"))
            for sid, rec in sorted(records.items())]
    return Timeline(recipe=recipe, started_at=None, wall_time_s=None, runs=runs,
                    from_records=True)
