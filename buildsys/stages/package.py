"""A release archive per variant: the compiled model plus manifest.json, byte-reproducible
(sorted entries, fixed timestamps, owners and permissions; gzip without a timestamp)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any, ClassVar

from buildsys.hashing import canonical_json, digest_file
from buildsys.stages._common import PYTHON_TOOLS, read_json
from buildsys.stages.base import Stage, StageContext
from buildsys.toolchain import tool_version

MANIFEST_TOOLS = ("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "aimet-torch",
                  "litert-torch")
FIXED_MTIME = 946684800  # 2000-01-01: archives must not record when they were built


def deterministic_tar_gz(files: dict[str, bytes | Path], dest: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(dest, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out,
                                                 mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())


class PackageStage(Stage):
    kind: ClassVar[str] = "package"
    version: ClassVar[str] = "1"
    tools: ClassVar[tuple[str, ...]] = (*PYTHON_TOOLS, *MANIFEST_TOOLS)
    wants_upstream_keys: ClassVar[bool] = True

    @classmethod
    def outputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return (params["archive"],)

    @classmethod
    def requirements(cls, params: dict[str, Any]) -> tuple[str, ...]:
        return ()  # the toolchains' versions go into the manifest; packaging imports none

    def run(self, ctx: StageContext) -> dict[str, Any]:
        params = ctx.params
        models = {name.partition("/")[2]: path for name, path in ctx.inputs.items()
                  if name.startswith("model/")}
        validation = read_json(ctx.input("validation"))
        manifest = {
            "recipe_digest": params["recipe_digest"],
            "variant": params["variant"],
            "runtime": params["runtime"],
            "weights": params.get("weights_note", ""),
            "inputs": params["io"]["inputs"],
            "outputs": params["io"]["outputs"],
            "files": {f"model/{n}": {"sha256": digest_file(p), "bytes": p.stat().st_size}
                      for n, p in sorted(models.items())},
            "metrics": {"validation": validation},
            "stage_keys": params.get("upstream_keys", {}),
            "tools": {name: tool_version(name) for name in ("python", *MANIFEST_TOOLS)},
        }
        if "selection" in ctx.inputs:  # quantization: auto: the rung chosen, every rung's figures
            manifest["quantization_choice"] = read_json(ctx.input("selection"))
        files: dict[str, bytes | Path] = {f"model/{n}": p for n, p in models.items()}
        files["manifest.json"] = canonical_json(manifest) + b"\n"
        archive = ctx.output(params["archive"])
        deterministic_tar_gz(files, archive)
        return {"archive": params["archive"], "archive_bytes": archive.stat().st_size,
                "model_bytes": sum(p.stat().st_size for p in models.values())}
