"""Which remote (AI Hub) stages cannot run in this build, decided before anything runs."""

from __future__ import annotations

import os

import networkx as nx

from buildsys.recipe.load import Recipe

AIHUB_ENV = "MODELBUILD_AIHUB"


def blocked_remote_stages(recipe: Recipe, graph: nx.DiGraph, offline: bool) -> dict[str, str]:
    remote = [s for s in graph.nodes if graph.nodes[s]["node"].kind.startswith("aihub_")]
    if not remote:
        return {}
    if offline or os.environ.get(AIHUB_ENV, "").lower() in {"off", "0", "false"}:
        reason = "AI Hub is off (--offline or MODELBUILD_AIHUB=off)"
        return dict.fromkeys(remote, reason)
    from buildsys.backends.aihub import token_problem

    problem = token_problem()
    return dict.fromkeys(remote, problem) if problem else {}
