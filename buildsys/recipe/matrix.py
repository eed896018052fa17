"""Expand `builds:` matrix entries into variants (model × quantization × target × device)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

AXES = ("model", "quantization", "target", "device")


@dataclass(frozen=True)
class Variant:
    model: str
    quantization: str
    target: str
    device: str
    entry: int = field(compare=False)  # index of the builds entry it came from
    validate: tuple[tuple[str, Any], ...] = field(default=(), compare=False)
    package: bool = field(default=True, compare=False)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.quantization}/{self.target}/{self.device}"

    def stage_id(self, kind: str) -> str:
        """The id of this variant's own stage of `kind` (infer, profile, validate, package)."""
        return f"{self.id}/{kind}"

    def compile_stage_id(self, kind: str = "compile", shared_by: str | None = None) -> str:
        """A compile (or link) is shared by every device it serves: by all host devices, by the
        devices of one chipset (`shared_by` names it), or made for one AI Hub device."""
        target = f"{self.target}@{shared_by}" if shared_by else self.target
        return f"{self.model}/{self.quantization}/{target}/{kind}"

    def thresholds(self) -> dict[str, Any]:
        return dict(self.validate)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def excluded(combo: dict[str, str], excludes: list[dict[str, Any]]) -> bool:
    return any(
        all(combo[axis] in as_list(rule[axis]) for axis in AXES if axis in rule)
        for rule in excludes
        if any(axis in rule for axis in AXES)
    )


def expand_builds(data: dict[str, Any], groups: frozenset[str] = frozenset()) -> list[Variant]:
    """All variants in declaration order, duplicates across entries kept once (first wins).

    An entry with a `group:` is expanded only when that group is asked for (`--group`).
    """
    seen: dict[Variant, None] = {}
    base_thresholds = {k: v for k, v in (data.get("validate") or {}).items()}
    schemes = data.get("quantization") or {}
    for index, entry in enumerate(data.get("builds") or []):
        if entry.get("group") and entry["group"] not in groups and "all" not in groups:
            continue
        lists = [as_list(entry[axis]) for axis in AXES]
        for values in itertools.product(*lists):
            combo = dict(zip(AXES, values, strict=True))
            if excluded(combo, entry.get("exclude") or []):
                continue
            thresholds = dict(base_thresholds)
            scheme = schemes.get(combo["quantization"]) or {}
            # quantization: auto's budget is confirmed again on the device the winner runs on
            thresholds.update(scheme.get("budget") or {})
            thresholds.update(scheme.get("validate") or {})
            thresholds.update(entry.get("validate") or {})
            variant = Variant(
                **combo,
                entry=index,
                validate=tuple(sorted(thresholds.items())),
                package=entry.get("package", True),
            )
            seen.setdefault(variant, None)
    return list(seen)
