"""How long a recipe's build would take on N workers, from measured stage times.

    python benchmarks/cluster_estimate.py recipes/ffnet.yaml --group all-variants \
        --measured build/ffnet/last-build.json

Plans the recipe (nothing runs), gives every stage a duration and prints: the total stage time
(one worker), the critical path (infinitely many workers) with its stages, and the wall time
of a greedy list schedule (longest path first, as a dask scheduler roughly does) on 1, 4, 16
and 64 workers.

Durations: a stage measured in `--measured` (a build's `last-build.json`) keeps its time. A
stage that was never measured (e.g. the models only in `--group all-variants`) takes the time
of the same stage of a measured model at the same input size, scaled by the two models'
multiply-accumulates (counted on torch's meta device: nothing is computed). Those are
estimates, and the output says which stages were measured and which scaled.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from pathlib import Path
from typing import Any

from buildsys.plan.node import StageNode
from buildsys.plan.pipeline import pipeline_nodes
from buildsys.recipe.load import Recipe, load_recipe
from buildsys.stages import stage_class


def model_macs(recipe: Recipe, model: str) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    import torch

    from buildsys.backends.torch_models import load_model

    spec = recipe.section("models")[model]
    with torch.device("meta"):
        module = load_model({k: v for k, v in spec["source"].items() if k != "weights"},
                            recipe.project_dir)
        inputs = [torch.zeros(i["shape"]) for i in spec["inputs"].values()]
    total = 0

    def count(layer: torch.nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        weight = layer.weight
        per_output = weight.numel() // weight.shape[0]
        total += per_output * output.numel()

    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            layer.register_forward_hook(count)
    with torch.no_grad():
        module(*inputs)
    return total


def shape_class(recipe: Recipe, model: str) -> tuple[Any, ...]:
    return tuple(tuple(i["shape"]) for i in recipe.section("models")[model]["inputs"].values())


def durations(recipe: Recipe, nodes: list[StageNode], measured: dict[str, float],
              macs: dict[str, int]) -> tuple[dict[str, float], dict[str, str]]:
    """Each stage's seconds, and how it was had ('measured' or 'scaled from <stage>');
    `macs` gathers the multiply-accumulates of the models it had to compare."""

    def macs_of(model: str) -> int:
        if model not in macs:
            macs[model] = model_macs(recipe, model)
        return macs[model]

    models = list(recipe.section("models"))
    seconds: dict[str, float] = {}
    how: dict[str, str] = {}
    for node in nodes:
        if node.id in measured:
            seconds[node.id], how[node.id] = measured[node.id], "measured"
            continue
        model = node.labels.get("model") or node.id.rpartition("@")[2]
        twins = [m for m in models if m != model and shape_class(recipe, m) ==
                 shape_class(recipe, model) and node.id.replace(model, m) in measured]
        if model not in models or not twins:
            seconds[node.id], how[node.id] = 0.0, "unknown (counted as 0 s)"
            continue
        twin = twins[0]
        twin_id = node.id.replace(model, twin)
        seconds[node.id] = measured[twin_id] * macs_of(model) / macs_of(twin)
        how[node.id] = f"scaled from {twin_id}"
    return seconds, how


def critical_path(nodes: list[StageNode], seconds: dict[str, float]) -> tuple[float, list[str]]:
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in nodes:  # pipeline_nodes lists every stage after its inputs' stages
        before = max(node.upstream(), key=lambda u: finish[u], default=None)
        finish[node.id] = seconds[node.id] + (finish[before] if before else 0.0)
        via[node.id] = before
    end = max(finish, key=finish.__getitem__)
    path = [end]
    while via[path[-1]]:
        path.append(via[path[-1]] or "")
    return finish[end], path[::-1]


def list_schedule(nodes: list[StageNode], seconds: dict[str, float], workers: int) -> float:
    """Wall time of a greedy schedule: a free worker takes the ready stage with the longest
    path to the end (ties: plan order)."""
    downstream: dict[str, list[str]] = {n.id: [] for n in nodes}
    for node in nodes:
        for up in node.upstream():
            downstream[up].append(node.id)
    tail: dict[str, float] = {}
    for node in reversed(nodes):
        tail[node.id] = seconds[node.id] + max((tail[d] for d in downstream[node.id]),
                                               default=0.0)
    order = {n.id: i for i, n in enumerate(nodes)}
    waiting = {n.id: len(n.upstream()) for n in nodes}
    ready = [(-tail[n.id], order[n.id], n.id) for n in nodes if not n.upstream()]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, workers
    while ready or running:
        while ready and free:
            _, _, stage = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[stage], stage))
            free -= 1
        now, done = heapq.heappop(running)
        free += 1
        for d in downstream[done]:
            waiting[d] -= 1
            if not waiting[d]:
                heapq.heappush(ready, (-tail[d], order[d], d))
    return now


def minutes(s: float) -> str:
    return f"{s / 60:6.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--group", action="append", default=[])
    parser.add_argument("--measured", type=Path, required=True,
                        help="a build's last-build.json holding measured stage times")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, groups=frozenset(args.group))
    nodes = pipeline_nodes(recipe)
    consumed = {up for node in nodes for up in node.upstream()}
    # What a default build leaves out: stages run only on demand that nothing consumes.
    nodes = [n for n in nodes if n.id in consumed or not stage_class(n.kind).on_demand]
    report = json.loads(args.measured.read_text())
    measured = {s["id"]: float(s["duration_s"]) for s in report["stages"]
                if s.get("status") == "built" and s.get("duration_s") is not None}
    macs: dict[str, int] = {}
    seconds, how = durations(recipe, nodes, measured, macs)
    scaled = sorted(i for i, h in how.items() if h != "measured")
    print(f"{args.recipe} {' '.join('--group ' + g for g in args.group)}: {len(nodes)} stages, "
          f"{len(nodes) - len(scaled)} measured, {len(scaled)} estimated")
    total = sum(seconds.values())
    length, path = critical_path(nodes, seconds)
    print(f"total stage time {minutes(total)}   critical path {minutes(length)}")
    for stage in path:
        print(f"    {seconds[stage]:8.1f} s  {stage}  ({how[stage]})")
    by_kind: dict[str, float] = {}
    for node in nodes:
        by_kind[node.kind] = by_kind.get(node.kind, 0.0) + seconds[node.id]
    print("time by stage kind: " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        if v / total >= 0.01))
    longest = max(seconds, key=seconds.__getitem__)
    print(f"longest single stage: {seconds[longest]:.0f} s  {longest}")
    for n in args.workers:
        wall = list_schedule(nodes, seconds, n)
        bound = max(total / n, length)
        print(f"{n:3d} workers: {minutes(wall)}  (lower bound {minutes(bound)}: "
              f"{'total/N' if total / n >= length else 'critical path'}; "
              f"efficiency {total / (n * wall):.0%})")
    if macs:
        print("multiply-accumulates per inference: " + ", ".join(
            f"{m} {n / 1e9:.1f} G" for m, n in sorted(macs.items())))
    if scaled:
        print("estimated stages (scaled by multiply-accumulates):")
        for stage in scaled:
            print(f"    {seconds[stage]:8.1f} s  {stage}  ({how[stage]})")
    if math.isnan(total):
        raise SystemExit("no durations")


if __name__ == "__main__":
    main()
