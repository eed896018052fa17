"""Local stages that need hardware this machine may lack (TensorRT: an NVIDIA GPU), decided
before anything runs: such a stage fails at plan time with its kind's reason ("cannot run
here: …"), without running, and its toolchain is not demanded; the rest of the build goes on
with --keep-going. A result already in the store is reused (the planner checks that first)."""

from __future__ import annotations

import networkx as nx

from buildsys.plan.planner import PlanFailure
from buildsys.stages import stage_class


def blocked_hardware_stages(graph: nx.DiGraph) -> dict[str, str]:
    """Stage id → `PlanFailure` for every stage whose kind needs hardware that is absent."""
    blocked: dict[str, str] = {}
    problems: dict[str, str | None] = {}
    for stage_id in graph.nodes:
        kind = graph.nodes[stage_id]["node"].kind
        cls = stage_class(kind)
        if not getattr(cls, "needs_hardware", False):
            continue
        if kind not in problems:
            problems[kind] = cls.unavailable()
        if problems[kind]:
            blocked[stage_id] = PlanFailure(f"cannot run here: {problems[kind]}")
    return blocked
