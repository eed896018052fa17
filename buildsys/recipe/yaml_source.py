"""YAML → plain Python data plus the source position of every key and value.

PyYAML's composer already records a start mark on every node; we walk the node tree ourselves
instead of using its constructor so that duplicate keys become errors (PyYAML keeps the last one
silently) and so that every path in the document maps back to a line and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10× faster

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class YamlDocument:
    path: Path
    data: Any
    positions: dict[PathKey, Position] = field(default_factory=dict)
    key_positions: dict[PathKey, Position] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def where(self, path: PathKey, *, key: bool = False) -> str:
        """`file:line:col` of the value (or the key) at `path`, or of its nearest ancestor."""
        table = self.key_positions if key else self.positions
        probe = tuple(path)
        while probe:
            if probe in table:
                pos = table[probe]
                return f"{self.path}:{pos.line}:{pos.column}"
            if probe in self.positions:
                pos = self.positions[probe]
                return f"{self.path}:{pos.line}:{pos.column}"
            probe = probe[:-1]
        return f"{self.path}:1:1"


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(path: Path, text: str | None = None) -> YamlDocument:
    """Parse `path`; syntax errors and duplicate keys land in `problems`, never raise."""
    doc = YamlDocument(path=path, data=None)
    if text is None:
        text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        doc.problems.append(f"{where}: YAML syntax error: {problem}")
        return doc
    if root is None:
        doc.data = {}
        return doc
    doc.data = _build(root, (), doc)
    return doc


# One constructor resolves every scalar with PyYAML's safe rules (int, float, bool, null, str).
_CONSTRUCTOR = yaml.SafeLoader("")


def _scalar(node: yaml.ScalarNode) -> Any:
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    _CONSTRUCTOR.constructed_objects.clear()
    return value


def _build(node: yaml.Node, path: PathKey, doc: YamlDocument) -> Any:
    doc.positions[path] = _position(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int | float | bool) or key is None:
                doc.problems.append(
                    f"{doc.path}:{_position(key_node).line}:{_position(key_node).column}: "
                    f"{format_path(path)}: keys must be plain strings"
                )
                continue
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in result:
                first = doc.key_positions[child]
                doc.problems.append(
                    f"{doc.path}:{_position(key_node).line}:{_position(key_node).column}: "
                    f"duplicate key {format_path(child)!r} (first defined at line {first.line})"
                )
            doc.key_positions[child] = _position(key_node)
            result[key] = _build(value_node, child, doc)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), doc) for i, item in enumerate(node.value)]
    return _scalar(node)
