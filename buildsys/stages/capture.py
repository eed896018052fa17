"""Capture the torch model as a program: torch.export (.pt2), TorchScript where export
cannot. This is what AI Hub (and other converters) take as input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from buildsys.numerics import NUMERICS
from buildsys.stages._common import PYTHON_TOOLS, example_inputs, load_torch_model
from buildsys.stages.base import Stage, StageContext


class CaptureStage(Stage):
    kind: ClassVar[str] = "capture"
    # Its bytes follow the pinned kernels (buildsys/numerics.py).
    version: ClassVar[str] = f"2+{NUMERICS}"
    output_files: ClassVar[tuple[str, ...]] = ("model.pt2",)
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, "torch")
    max_threads: ClassVar[int] = 2
    # No local stage reads the .pt2 (export traces the model itself): built on request only.
    on_demand: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from buildsys.backends.torch_models import capture

        scratch = ctx.work_dir / "model.pt2"
        info = capture(load_torch_model(ctx), example_inputs(ctx.params["io"]), scratch)
        # One output name whatever the format, so later stages can refer to it; the format
        # is recorded in the metrics (and AI Hub sniffs the archive).
        shutil.copyfile(Path(info["path"]), ctx.output("model.pt2"))
        return {"format": info["format"], **({"export_error": info["export_error"]}
                                              if "export_error" in info else {})}
