"""The stage graph (networkx): nodes are StageNodes, an edge runs producer → consumer."""

from __future__ import annotations

import fnmatch

import networkx as nx

from buildsys.errors import RecipeError
from buildsys.plan.node import OutputRef, StageNode
from buildsys.recipe.load import Recipe


def build_graph(recipe: Recipe) -> nx.DiGraph:
    from buildsys.plan.pipeline import pipeline_nodes
    from buildsys.plan.steps import step_nodes

    graph = nx.DiGraph()
    for node in [*pipeline_nodes(recipe), *step_nodes(recipe)]:
        if node.id in graph and graph.nodes[node.id]["node"] != node:
            raise AssertionError(f"two different stages share the id {node.id}")
        graph.add_node(node.id, node=node)
    for stage_id in list(graph.nodes):
        node: StageNode = graph.nodes[stage_id]["node"]
        for ref in node.inputs.values():
            if isinstance(ref, OutputRef):
                graph.add_edge(ref.stage, stage_id)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    chain = " → ".join(edge[0] for edge in cycle)
    raise RecipeError([f"{recipe.path}: steps form a cycle: {chain} → {cycle[0][0]}"])


def matches(stage_id: str, pattern: str) -> bool:
    """A pattern selects a stage if it matches its id or any leading part of it."""
    parts = stage_id.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern)
               for n in range(1, len(parts) + 1))


def _on_demand(graph: nx.DiGraph, stage_id: str) -> bool:
    from buildsys.stages import stage_class

    return stage_class(graph.nodes[stage_id]["node"].kind).on_demand


def _names(pattern: str, stage_id: str) -> bool:
    """The pattern asks for this very stage: it matches the whole id and its last part has
    no wildcard ('*/capture', 'tiny/capture'; not 'tiny/*')."""
    last = pattern.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(stage_id, pattern) and not any(c in last for c in "*?[")


def select(graph: nx.DiGraph, patterns: list[str]) -> nx.DiGraph:
    """The stages matching any pattern plus everything they need. Stages of on-demand kinds
    (capture) only when a pattern names them or a chosen stage needs them."""
    if not patterns:
        unasked = {s for s in graph.nodes
                   if graph.out_degree(s) == 0 and _on_demand(graph, s)}
        return graph.subgraph(set(graph.nodes) - unasked).copy() if unasked else graph
    chosen = {s for s in graph.nodes if any(matches(s, p) for p in patterns)
              and (not _on_demand(graph, s) or any(_names(p, s) for p in patterns))}
    if not chosen:
        raise RecipeError([f"no stage matches {', '.join(patterns)}; "
                           f"stages look like: {', '.join(sorted(graph.nodes)[:5])}, …"])
    needed = set(chosen)
    for stage_id in chosen:
        needed |= nx.ancestors(graph, stage_id)
    return graph.subgraph(needed).copy()


def topological_order(graph: nx.DiGraph) -> list[str]:
    """Deterministic order: lexicographic among stages that are ready at the same time."""
    return list(nx.lexicographical_topological_sort(graph))
