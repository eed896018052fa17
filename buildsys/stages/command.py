"""Custom command steps (like DVC stages): a command line, declared inputs and outputs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Any, ClassVar

from buildsys.errors import StageError
from buildsys.stages.base import Stage, StageContext

STATUS_ENV = "MODELBUILD_STATUS"


class CommandStage(Stage):
    kind: ClassVar[str] = "command"
    version: ClassVar[str] = "1"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        params = ctx.params
        # Inputs appear in the working directory at their declared relative paths.
        for name, path in ctx.inputs.items():
            target = ctx.work_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
        cmd = params["cmd"]
        if params.get("shell"):
            argv: list[str] | str = cmd if isinstance(cmd, str) else shlex.join(cmd)
        else:
            argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        env = {**os.environ, **(params.get("env") or {})}
        if ctx.status_path is not None:  # a command may report progress: one line, rewritten
            env[STATUS_ENV] = str(ctx.status_path)
        completed = subprocess.run(argv, cwd=ctx.work_dir, env=env, shell=bool(params.get("shell")),
                                   check=False)
        if completed.returncode != 0:
            raise StageError(f"command exited with status {completed.returncode}: {cmd}")
        for out in params["outs"]:
            produced = ctx.work_dir / out
            if not produced.is_file():
                raise StageError(f"command did not write its declared output {out!r}")
            shutil.move(produced, ctx.output(out))
        return {"returncode": completed.returncode}
