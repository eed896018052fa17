"""`quantization: auto`: ship the cheapest rung of the ladder that meets the budget.

Inputs are every rung's host score and model; the output is the winning model (its bytes,
unchanged) and `selection.json`, the table of every rung's figures and verdict. Nothing here
runs a model, so a changed budget re-runs this stage alone; if the winner stays the same, its
bytes do too and everything downstream stays cached. No rung passes: the build fails with the
table."""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from buildsys.stages._common import PYTHON_TOOLS, read_json, write_json
from buildsys.stages.base import CheckFailed, Stage, StageContext


def ladder_order(rungs: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Cheapest first. size: fewer weight bits first; latency: the ladder as declared (8-bit
    activations, then more layers at 16 bits, then 16-bit everywhere, then fp16). Ties keep
    the declared order, so both objectives give the issue's ladder for today's rungs."""
    if objective == "size":
        return sorted(rungs, key=lambda r: (r["weight_bits"], r["index"]))
    return sorted(rungs, key=lambda r: r["index"])


def figures_row(score: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"psnr_db": min(o["psnr_db"] for o in score["outputs"].values()),
                           "model_bytes": score["model_bytes"]}
    task = score.get("task_metrics")
    if task:
        row.update({k: v for k, v in task["variant"].items()})
        row.update({f"{k}_drop": v for k, v in task["drop"].items()})
    return row


class SelectQuantizationStage(Stage):
    kind: ClassVar[str] = "select_quantization"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("model.onnx", "selection.json")
    tools: ClassVar[tuple[str, ...]] = PYTHON_TOOLS
    lock_notes: ClassVar[tuple[str, ...]] = ("chosen", "rungs")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.stages.validate import check

        budget, objective = ctx.params["budget"], ctx.params["objective"]
        table = []
        winner = None
        for rung in ladder_order(ctx.params["rungs"], objective):
            score = read_json(ctx.input(f"rung/{rung['name']}/score"))
            misses = check(score, budget)
            table.append({"rung": rung["name"], "scheme": rung["scheme"],
                          **figures_row(score), "passed": not misses, "misses": misses})
            if winner is None and not misses:
                winner = rung["name"]
        selection = {"budget": budget, "objective": objective, "chosen": winner,
                     "rungs": table, "scored_on": "host: onnxruntime CPU, ORT_ENABLE_BASIC"}
        if winner is None:
            raise CheckFailed(f"{ctx.stage_id.rsplit('/', 1)[0]}: no rung meets the budget "
                              f"{budget}:\n{render_table(table)}", selection)
        shutil.copyfile(ctx.input(f"rung/{winner}/model"), ctx.output("model.onnx"))
        write_json(ctx.output("selection.json"), selection)
        return {"chosen": winner, "rungs": table}


def render_table(table: list[dict[str, Any]]) -> str:
    columns = [c for c in ("rung", "psnr_db", "miou", "miou_drop", "pixel_accuracy", "top1",
                           "top1_drop", "top5", "model_bytes", "passed")
               if any(c in row for row in table)]
    lines = ["  " + "  ".join(f"{c:>14}" for c in columns)]
    for row in table:
        lines.append("  " + "  ".join(f"{_cell(row.get(c)):>14}" for c in columns))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
