"""Decide, before anything runs, which stages are cached and why the others must run.

Constructive traces: a stage whose inputs are all known (source files, or outputs of cached
stages) gets its key now; if the store has a complete record for that key it is `cached`.
A stage downstream of one that runs cannot be keyed yet: it is planned `run` and may still turn
out cached at execution time, when its inputs' real digests are known (early cutoff).

With a remote cache, stages not in the local store are looked up there in waves: one batch
for every stage keyed so far, then again for the stages a hit made keyable (a hit's record
gives its outputs' digests), until a wave finds nothing. A hit is planned `remote`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from buildsys.hashing import digest_value
from buildsys.plan.graph import matches, topological_order
from buildsys.plan.keys import explain_change, ingredients, stage_key
from buildsys.plan.node import FileRef, StageNode
from buildsys.plan.status import Status
from buildsys.store.record import StageRecord
from buildsys.store.store import Store

CACHED, RUN, SKIPPED, FAILED = Status.CACHED, Status.RUN, Status.SKIPPED, Status.FAILED
REMOTE = Status.REMOTE  # a remote cache hit: the record is there, its blobs on the remote


class PlanFailure(str):
    """A `blocked` reason that fails the stage at plan time instead of skipping it (e.g. no AI
    Hub API token): the stage never runs, the build exits 1, --keep-going builds the rest."""


@dataclass
class PlannedStage:
    node: StageNode
    status: Status
    reason: str
    key: str | None = None
    ingredients: dict[str, Any] | None = None
    record: StageRecord | None = None
    forced: bool = False


@dataclass
class Plan:
    graph: nx.DiGraph
    order: list[str]
    all_stage_ids: set[str] = field(default_factory=set)  # before selection: for the lock
    stages: dict[str, PlannedStage] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(1 for s in self.stages.values() if s.status == status)


def file_digests(node: StageNode, store: Store) -> dict[str, str]:
    return {name: store.stats.digest(ref.path) for name, ref in node.inputs.items()
            if isinstance(ref, FileRef)}


def resolve_input_digests(node: StageNode, store: Store,
                          records: dict[str, StageRecord]) -> dict[str, str] | None:
    """Digest of every input, or None if an upstream stage has no record yet."""
    digests = file_digests(node, store)
    for name, ref in node.inputs.items():
        if isinstance(ref, FileRef):
            continue
        record = records.get(ref.stage)
        if record is None:
            return None
        output = record["outputs"].get(ref.name)
        if output is None:
            return None
        digests[name] = output["digest"]
    return digests


def upstream_keys(node: StageNode, records: dict[str, StageRecord]) -> dict[str, str]:
    return {s: records[s]["key"] for s in sorted(node.upstream()) if s in records}


def last_ingredients(store: Store, stage_id: str) -> dict[str, Any] | None:
    key = store.machine.last_key(stage_id)
    record = store.get_record(key) if key else None
    return record.get("ingredients") if record else None


def remote_hit(node: StageNode, key: str, remote: dict[str, dict[str, Any]]) -> bool:
    """A record from the remote cache answers this stage: it was made from exactly these
    ingredients (their digest is the key) and names every output the stage declares."""
    record = remote.get(key)
    return record is not None and digest_value(record["ingredients"]) == key \
        and all(name in record["outputs"] for name in node.outputs)


def make_plan_with_remote(graph: nx.DiGraph, store: Store, force: list[str] | None = None,
                          blocked: dict[str, str] | None = None) -> Plan:
    """Plan against the local store, then ask the remote (batched, concurrent) about every
    keyed stage the local store lacks; repeat while hits make more stages keyable. Without a
    remote only what it answered before (remembered on this machine) is used."""
    known: dict[str, dict[str, Any]] = {}
    asked: set[str] = set()
    while True:
        plan = make_plan(graph, store, force, blocked, remote=known)
        wave = sorted({p.key for p in plan.stages.values()
                       if p.status in (RUN, SKIPPED, FAILED) and p.key and not p.forced
                       and p.key not in asked})
        asked.update(wave)
        found = store.find_remote_records(wave)
        if not found:
            return plan
        known.update(found)


def make_plan(graph: nx.DiGraph, store: Store, force: list[str] | None = None,
              blocked: dict[str, str] | None = None,
              failing: dict[str, str] | None = None,
              remote: dict[str, dict[str, Any]] | None = None) -> Plan:
    """`blocked` maps stage ids to a reason they cannot run (e.g. AI Hub offline): skipped.
    `failing` (or a `PlanFailure` reason in `blocked`): they fail without running (e.g. no AI
    Hub token). Either way a stage whose result is in the store already is cached. `remote`:
    records found in the remote cache, by key (a stage they answer is planned `remote`)."""
    plan = Plan(graph=graph, order=topological_order(graph))
    remote = remote or {}
    hit_reason = "remote hit" if store.remote_in_use() else \
        "result from the remote cache, remembered here (no remote in use)"
    records: dict[str, StageRecord] = {}
    blocked = blocked or {}
    failing = {**{s: r for s, r in blocked.items() if isinstance(r, PlanFailure)},
               **(failing or {})}
    for stage_id in plan.order:
        node: StageNode = graph.nodes[stage_id]["node"]
        forced = any(matches(stage_id, p) for p in force or [])
        upstream_out = [u for u in graph.predecessors(stage_id)
                        if plan.stages[u].status in (SKIPPED, FAILED)]
        if upstream_out:
            word = "is skipped" if plan.stages[upstream_out[0]].status == SKIPPED else "fails"
            plan.stages[stage_id] = PlannedStage(node, SKIPPED,
                                                 f"upstream {upstream_out[0]} {word}")
            continue
        digests = resolve_input_digests(node, store, records)
        if stage_id in blocked or stage_id in failing:
            parts = None if digests is None or forced else ingredients(
                node, digests, upstream_keys(node, records))
            key = stage_key(parts) if parts is not None else None
            record = store.get_record(key) if key is not None else None
            if record is not None and not store.damaged_outputs(record):
                records[stage_id] = record  # its result needs no network: reuse it
                plan.stages[stage_id] = PlannedStage(node, CACHED, "up to date", key, parts,
                                                     record)
            elif key is not None and remote_hit(node, key, remote):
                records[stage_id] = remote[key]
                plan.stages[stage_id] = PlannedStage(node, REMOTE, hit_reason, key, parts,
                                                     remote[key])
            elif stage_id in failing:
                plan.stages[stage_id] = PlannedStage(node, FAILED, str(failing[stage_id]),
                                                     key, parts)
            else:
                plan.stages[stage_id] = PlannedStage(node, SKIPPED, str(blocked[stage_id]),
                                                     key, parts)
            continue
        if digests is None:
            pending = sorted(u for u in graph.predecessors(stage_id)
                             if plan.stages[u].status == RUN)
            if forced:
                reason = "forced"
            elif store.machine.last_key(stage_id) is None:  # never built here: nothing changed
                reason = "new"
            else:
                reason = f"input changed: {pending[0]} runs first"
            plan.stages[stage_id] = PlannedStage(node, RUN, reason, forced=forced)
            continue
        parts = ingredients(node, digests, upstream_keys(node, records))
        key = stage_key(parts)
        record = store.get_record(key)
        damaged = store.damaged_outputs(record) if record is not None else []
        if record is not None and not damaged and not forced:
            records[stage_id] = record
            plan.stages[stage_id] = PlannedStage(node, CACHED, "up to date", key, parts, record)
            continue
        if not forced and remote_hit(node, key, remote):
            records[stage_id] = remote[key]
            plan.stages[stage_id] = PlannedStage(node, REMOTE, hit_reason, key, parts,
                                                 remote[key])
            continue
        if forced:
            reason = "forced"
        elif record is not None:
            reason = f"cached output missing or corrupt in the store: {', '.join(damaged)}"
            warnings.warn(f"{stage_id}: {reason}; it runs again", stacklevel=2)
        else:
            reason = explain_change(last_ingredients(store, stage_id), parts)
        plan.stages[stage_id] = PlannedStage(node, RUN, reason, key, parts, forced=forced)
    return plan
