"""Custom command steps → stage nodes; a dep that another step writes becomes an edge."""

from __future__ import annotations

from buildsys.plan.node import FileRef, InputRef, OutputRef, StageNode
from buildsys.recipe.load import Recipe


def step_nodes(recipe: Recipe) -> list[StageNode]:
    steps = recipe.section("steps")
    producer = {out: name for name, step in steps.items() for out in step["outs"]}
    timeouts = recipe.settings["timeouts"]
    nodes = []
    for name, step in steps.items():
        inputs: dict[str, InputRef] = {}
        for dep in step.get("deps") or []:
            inputs[dep] = (OutputRef(f"steps/{producer[dep]}", dep) if dep in producer
                           else FileRef(recipe.project_dir / dep))
        params = {key: step[key] for key in ("cmd", "shell", "env") if key in step}
        params["outs"] = list(step["outs"])
        nodes.append(StageNode(
            id=f"steps/{name}", kind="command", params=params, inputs=inputs,
            outputs=tuple(step["outs"]), timeout=step.get("timeout", timeouts.get("command")),
        ))
    return nodes
