"""The release index over every packaged variant: index.json and a README table (published in
the recipe's release folder, release/<recipe>/ by default).

It gathers measured figures (latency, where it ran), so unlike the archives it is not
expected to be byte-identical across machines; it is listed as a measurement in the lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from buildsys.release_summary import release_markdown
from buildsys.stages._common import PYTHON_TOOLS, read_json, write_json
from buildsys.stages.base import Stage, StageContext


class ReleaseIndexStage(Stage):
    kind: ClassVar[str] = "release"
    version: ClassVar[str] = "1"
    output_files: ClassVar[tuple[str, ...]] = ("index.json", "README.md")
    measurement_files: ClassVar[tuple[str, ...]] = ("index.json", "README.md")
    tools: ClassVar[tuple[str, ...]] = PYTHON_TOOLS

    @classmethod
    def requirements(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return ()  # JSON and text only

    def run(self, ctx: StageContext) -> dict[str, Any]:
        rows = [self._row(ctx, entry) for entry in ctx.params["variants"]]
        float_sizes = {(r["model"], r["target"]): r["model_bytes"] for r in rows
                       if r["quantization"] == "float"}
        for row in rows:
            base = float_sizes.get((row["model"], row["target"]))
            if base and row["model_bytes"]:
                row["size_ratio_vs_float"] = round(base / row["model_bytes"], 2)
        index = {"recipe": ctx.params["recipe"], "variants": rows}
        write_json(ctx.output("index.json"), index)
        ctx.output("README.md").write_text(release_markdown(ctx.params["recipe"], rows))
        return {"variants": len(rows)}

    def _row(self, ctx: StageContext, entry: dict[str, Any]) -> dict[str, Any]:
        base = entry["id"]
        compiled = [ctx.input(f"{base}/compiled/{n}") for n in entry["compiled"]]
        row: dict[str, Any] = {k: entry[k] for k in ("id", "model", "quantization", "target",
                                                      "device")}
        row["model_bytes"] = sum(p.stat().st_size for p in compiled)
        if "package" in entry:
            row["archive"] = entry["package"]
            row["archive_sha256"] = _sha(ctx.input(f"{base}/package"))
        if "profile" in entry:
            profile = read_json(ctx.input(f"{base}/profile"))
            row["latency_ms"] = profile.get("latency_ms")
            row["latency_where"] = profile.get("where")
            row["peak_memory_mb"] = profile.get("peak_memory_mb")
        elif "infer" in entry:
            infer = read_json(ctx.input(f"{base}/infer"))
            row["latency_ms"] = infer.get("latency_ms")
            row["latency_where"] = infer.get("where")
        if "validate" in entry:
            validation = read_json(ctx.input(f"{base}/validate"))
            row["psnr_db"] = {n: o["psnr_db"] for n, o in validation["outputs"].items()}
            row["validation"] = validation["outputs"]
            if "task_metrics" in validation:
                task = row["task_metrics"] = validation["task_metrics"]
                # beside the output's other figures too, where the report page reads them
                row["validation"][task["output"]].update(task["variant"])
        if "selection" in entry:
            selection = read_json(ctx.input(f"{base}/selection"))
            row["quantization_choice"] = {"chosen": selection["chosen"],
                                          "budget": selection["budget"],
                                          "objective": selection["objective"],
                                          "rungs": selection["rungs"], "file": entry["selection"]}
        if "sensitivity" in entry:
            layers = read_json(ctx.input(f"{base}/sensitivity"))["layers"]
            row["sensitivity"] = {"file": entry["sensitivity"], "layers": [
                {k: layer[k] for k in ("tensor", "node", "op_type", "sqnr_db")}
                for layer in layers[:5]]}
        return row


def _sha(path: Path) -> str:
    from buildsys.hashing import digest_file

    return digest_file(path)
