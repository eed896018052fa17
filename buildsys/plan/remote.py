"""Which remote (AI Hub) stages cannot run in this build, decided before anything runs.

Two different answers, because they mean different things to the user:

* AI Hub switched off (`--offline`, `MODELBUILD_AIHUB=off`): the remote stages are *skipped*
  on purpose; the rest of the build succeeds.
* No API token configured, or AI Hub's host does not resolve (no network): the remote stages
  *fail* at plan time with the message that says how to fix it (the build exits 1), without
  running; local stages still build with `--keep-going`. The stage kind owns that check
  (`Stage.unavailable`); the only network access is one name lookup.

Either way a remote stage whose result is already in the store stays cached (the planner checks
that first): no network or token is needed to reuse a result.
"""

from __future__ import annotations

import os

import networkx as nx

from buildsys.plan.planner import PlanFailure
from buildsys.recipe.load import Recipe
from buildsys.stages import stage_class

AIHUB_ENV = "MODELBUILD_AIHUB"
OFF_VALUES = {"off", "0", "false", "no"}


def remote_stage_ids(graph: nx.DiGraph) -> list[str]:
    return [s for s in graph.nodes if graph.nodes[s]["node"].kind.startswith("aihub_")]


def switched_off(offline: bool) -> bool:
    """AI Hub is off for this build (`--offline` or MODELBUILD_AIHUB=off)."""
    return offline or os.environ.get(AIHUB_ENV, "").strip().lower() in OFF_VALUES


def blocked_remote_stages(recipe: Recipe, graph: nx.DiGraph, offline: bool) -> dict[str, str]:
    """Stage id → reason; a `PlanFailure` reason fails the stage, a plain one skips it."""
    del recipe
    remote = remote_stage_ids(graph)
    if not remote:
        return {}
    if switched_off(offline):
        reason = f"AI Hub is off (--offline or {AIHUB_ENV}=off)"
        return dict.fromkeys(remote, reason)
    blocked: dict[str, str] = {}
    problems: dict[object, str | None] = {}
    for stage_id in remote:
        cls = stage_class(graph.nodes[stage_id]["node"].kind)
        # One check per implementation (every AI Hub kind shares one), not one per stage.
        check = cls.unavailable.__func__  # type: ignore[attr-defined]
        if check not in problems:
            problems[check] = cls.unavailable()
        problem = problems[check]
        if problem:
            blocked[stage_id] = PlanFailure(problem)
    return blocked
