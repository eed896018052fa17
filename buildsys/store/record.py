"""A stage record: what one finished stage produced, under the key that made it.

Records are JSON documents (the local index keeps their text; the remote cache serves them to
other machines), so their type is a TypedDict: one representation on disk, on the wire and in
memory, with no conversion layer between. `record_problem` is the one check of that shape,
applied to everything read back, locally or from a remote (which is untrusted).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, NotRequired, TypedDict

_HEX64 = re.compile(r"[0-9a-f]{64}")


class OutputEntry(TypedDict):
    """One output file: its content digest (sha256, the blob's name) and size in bytes."""

    digest: str
    size: int


class StageRecord(TypedDict):
    stage_id: str  # the node's id in the plan that built it (for people; not part of the key)
    kind: str
    key: str  # the stage key it is stored under
    ingredients: dict[str, Any]  # what the key was computed from (plan/keys.py)
    outputs: dict[str, OutputEntry]  # relative file name → digest and size
    metrics: NotRequired[dict[str, Any]]  # what the stage returned (figures, job ids)
    duration_s: NotRequired[float]
    log: NotRequired[str]  # the stage's output, shortened


FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "stage_id": str, "kind": str, "key": str, "ingredients": dict, "outputs": dict,
    "metrics": dict, "duration_s": (int, float), "log": str}
REQUIRED_FIELDS = tuple(sorted(StageRecord.__required_keys__))


def new_record(stage_id: str, kind: str, key: str, ingredients: dict[str, Any],
               outputs: dict[str, OutputEntry], metrics: dict[str, Any], duration_s: float,
               log: str) -> StageRecord:
    return StageRecord(stage_id=stage_id, kind=kind, key=key, ingredients=ingredients,
                       outputs=outputs, metrics=metrics, duration_s=round(duration_s, 3),
                       log=log)


def record_problem(record: Any, stage_key: str) -> str | None:
    """Why `record` cannot be used as the record of `stage_key`, or None when it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    unexpected = sorted(set(record) - set(FIELD_TYPES))
    if unexpected:
        return f"unexpected field(s) {', '.join(unexpected[:5])}"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for name, kind in FIELD_TYPES.items():
        if name in record and (not isinstance(record[name], kind)
                               or isinstance(record[name], bool)):
            return f"field {name} has the wrong type"
    if record["key"] != stage_key:
        return "stored under another stage key"
    for name, output in record["outputs"].items():
        if not plain_relative_name(name):
            return f"output name {name[:80]!r} is not a plain relative path"
        if not (isinstance(output, dict) and set(output) == {"digest", "size"}):
            return f"output {name!r} names more than a digest and a size"
        if not (isinstance(output["digest"], str) and _HEX64.fullmatch(output["digest"])):
            return f"output {name!r} has no valid sha256 digest"
        if not (isinstance(output["size"], int) and not isinstance(output["size"], bool)
                and output["size"] >= 0):
            return f"output {name!r} has no valid size"
    return None


def plain_relative_name(name: str) -> bool:
    """A name that stays inside the directory it is placed in (no absolute path, no `..`)."""
    if not name or len(name) > 300 or "\\" in name or "\0" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(p not in ("", ".", "..") for p in name.split("/"))
