"""Stage keys: a digest of exactly what may change a stage's output, and nothing else."""

from __future__ import annotations

from typing import Any

from buildsys.hashing import digest_value
from buildsys.plan.node import StageNode
from buildsys.stages import stage_class
from buildsys.toolchain import tool_version


def ingredients(node: StageNode, input_digests: dict[str, str],
                upstream_keys: dict[str, str] | None = None) -> dict[str, Any]:
    cls = stage_class(node.kind)
    params = node.params
    if cls.wants_upstream_keys:
        params = {**params, "upstream_keys": dict(sorted((upstream_keys or {}).items()))}
    return {
        "kind": node.kind,
        "version": cls.version,
        "params": params,
        "inputs": dict(sorted(input_digests.items())),
        "tools": {name: tool_version(name) for name in sorted(cls.tool_names(node.params))},
    }


def stage_key(parts: dict[str, Any]) -> str:
    return digest_value(parts)


def explain_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Why a stage whose key changed must run: the first kind of difference, with names."""
    if old is None:
        return "new"
    if old.get("version") != new["version"] or old.get("kind") != new["kind"]:
        return f"stage implementation changed ({old.get('version')} → {new['version']})"
    changed_tools = [f"{t} {old['tools'].get(t, '-')} → {v}" for t, v in new["tools"].items()
                     if old.get("tools", {}).get(t) != v]
    if changed_tools:
        return "tool version changed: " + ", ".join(changed_tools)
    changed_params = _diff_keys(old.get("params", {}), new["params"])
    if changed_params:
        return "parameters changed: " + ", ".join(changed_params)
    changed_inputs = _diff_keys(old.get("inputs", {}), new["inputs"])
    if changed_inputs:
        return "input changed: " + ", ".join(changed_inputs)
    return "new"


def _diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_diff_keys(a, b, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out
