"""The lock file beside the recipe: every stage's key and output digests (YAML, sorted, stable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from buildsys.errors import StoreError

Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LOCK_VERSION = 1


def lock_entry(stage_key: str, outputs: dict[str, dict[str, Any]],
               measurements: tuple[str, ...] = (),
               notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Key and output digests; measured outputs (timings) are named but not pinned; `notes`
    are figures a reader of the lock wants to see (e.g. the rung `auto` chose)."""
    entry: dict[str, Any] = {"key": stage_key, "outputs": {
        n: o["digest"] for n, o in sorted(outputs.items()) if n not in measurements}}
    if measurements:
        entry["measurements"] = sorted(n for n in outputs if n in measurements)
    if notes:
        entry["notes"] = notes
    return entry


def read_lock(path: Path) -> dict[str, dict[str, Any]]:
    """Stage id → {key, outputs}; an absent or unreadable lock is empty."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        return {}
    return data["stages"]


def render_lock(recipe_name: str, stages: dict[str, dict[str, Any]]) -> str:
    body = {"lock_version": LOCK_VERSION, "recipe": recipe_name,
            "stages": {k: stages[k] for k in sorted(stages)}}
    return yaml.dump(body, Dumper=Dumper, sort_keys=True, default_flow_style=False, width=200)


def write_lock(path: Path, recipe_name: str, stages: dict[str, dict[str, Any]]) -> bool:
    """Write atomically; returns False (and writes nothing) when the content is unchanged."""
    text = render_lock(recipe_name, stages)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only project: the old lock stays as it was
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write the lock file {path}: {exc.strerror or exc}") from exc
    return True
