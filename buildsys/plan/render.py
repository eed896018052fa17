"""Plan and graph as text: the `--plan` table, `--json`, `--explain`, DOT and Mermaid."""

from __future__ import annotations

import json
from typing import Any

import networkx as nx

from buildsys.plan.planner import Plan
from buildsys.plan.status import Status


def plan_table(plan: Plan) -> str:
    rows = [(s, plan.stages[s].status, plan.stages[s].reason) for s in plan.order]
    width = max((len(r[0]) for r in rows), default=5)
    lines = [f"{'STAGE':<{width}}  {'STATUS':<7}  REASON"]
    lines += [f"{sid:<{width}}  {status:<7}  {reason}" for sid, status, reason in rows]
    summary = f"{plan.count(Status.RUN)} to run, {plan.count(Status.CACHED)} cached, " \
              f"{plan.count(Status.SKIPPED)} skipped"
    if plan.count(Status.REMOTE):  # answered by the remote cache: downloaded only where needed
        summary += f", {plan.count(Status.REMOTE)} remote hit(s)"
    if plan.count(Status.FAILED):  # e.g. an AI Hub stage without a token: fails without running
        summary += f", {plan.count(Status.FAILED)} cannot run"
    lines.append(summary)
    return "\n".join(lines)


def plan_json(plan: Plan) -> str:
    stages = [{"id": s, "kind": plan.stages[s].node.kind, "status": plan.stages[s].status,
               "reason": plan.stages[s].reason, "key": plan.stages[s].key,
               "needs": sorted(plan.graph.predecessors(s))} for s in plan.order]
    return json.dumps({"stages": stages}, indent=2)


def explain(plan: Plan, stage_id: str) -> str:
    planned = plan.stages[stage_id]
    parts: dict[str, Any] | None = planned.ingredients
    lines = [f"stage   {stage_id}", f"kind    {planned.node.kind}",
             f"status  {planned.status} ({planned.reason})"]
    if parts is None:
        lines.append("key     not known yet: an upstream stage runs first")
        lines.append("params  " + json.dumps(planned.node.params, sort_keys=True))
        return "\n".join(lines)
    lines.append(f"key     {planned.key}")
    lines.append(f"version {parts['version']}")
    lines.append("params  " + json.dumps(parts["params"], sort_keys=True))
    for name, digest in parts["inputs"].items():
        lines.append(f"input   {name} = {digest}")
    for name, version in parts["tools"].items():
        lines.append(f"tool    {name} {version}")
    return "\n".join(lines)


def _label(stage_id: str) -> str:
    return stage_id.replace('"', "'")


def to_dot(graph: nx.DiGraph) -> str:
    lines = ["digraph modelbuild {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
    for stage_id in sorted(graph.nodes):
        kind = graph.nodes[stage_id]["node"].kind
        lines.append(f'  "{_label(stage_id)}" [label="{_label(stage_id)}\\n({kind})"];')
    for a, b in sorted(graph.edges):
        lines.append(f'  "{_label(a)}" -> "{_label(b)}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: nx.DiGraph) -> str:
    ids = {s: f"s{i}" for i, s in enumerate(sorted(graph.nodes))}
    lines = ["flowchart LR"]
    for stage_id, short in ids.items():
        lines.append(f'  {short}["{_label(stage_id)}"]')
    for a, b in sorted(graph.edges):
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"
