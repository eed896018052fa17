"""Preprocess a dataset split into model-ready tensors (`samples.npz`), and its labels
(`labels.npz`) when the dataset has labels and the split is the validation split."""

from __future__ import annotations

from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import PYTHON_TOOLS, save_samples
from buildsys.stages.base import Stage, StageContext


def has_labels(params: dict[str, Any]) -> bool:
    return bool(params["spec"].get("labels")) and params["split"] == "validation"


class DatasetStage(Stage):
    kind: ClassVar[str] = "dataset"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("samples.npz",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, "pillow")

    @classmethod
    def outputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return ("samples.npz", "labels.npz") if has_labels(params) else cls.output_files

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.data.datasets import load_samples

        files = [ctx.inputs[n] for n in sorted(ctx.inputs) if n.startswith("files/")]
        samples = load_samples(ctx.params["spec"], files, ctx.params["io"]["inputs"],
                               ctx.params["split"], ctx.params["count"])
        save_samples(samples, ctx.output("samples.npz"))
        if not has_labels(ctx.params):
            return {"samples": len(samples)}
        from buildsys.data.labels import load_labels

        label_paths = [ctx.inputs[n] for n in sorted(ctx.inputs) if n.startswith("labels/")]
        images = files if not {"npz", "npy", "python", "random"} & set(ctx.params["spec"]) \
            else []
        labels = load_labels(ctx.params["spec"], label_paths, images,
                             ctx.params["io"]["inputs"], ctx.params["split"],
                             ctx.params["count"])
        if len(labels) != len(samples):
            from buildsys.errors import StageError

            raise StageError(f"the {ctx.params['split']} split has {len(samples)} samples but "
                             f"{len(labels)} labels")
        save_samples([{"label": value} for value in labels], ctx.output("labels.npz"))
        return {"samples": len(samples), "labels": len(labels)}
