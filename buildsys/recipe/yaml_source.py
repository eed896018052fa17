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
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:  # a binary file given as the recipe, say
            before = raw[: exc.start]
            line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
            doc.problems.append(f"{path}:{line}:{column}: not UTF-8 text (byte "
                                f"0x{raw[exc.start]:02x}); a recipe is a YAML file")
            return doc
        except OSError as exc:
            doc.problems.append(f"{path}: cannot read the recipe: {exc.strerror or exc}")
            return doc
    try:
        root = yaml.compose(text, Loader=Loader)
    except RecursionError:
        doc.problems.append(f"{path}:1:1: the document is nested too deeply")
        return doc
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
_TAG = "tag:yaml.org,2002:"
_COLLECTION_TAGS = {f"{_TAG}map", f"{_TAG}seq"}
_PLAIN_TAGS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = f"{_TAG}timestamp"
MAX_DEPTH = 64  # deeper than any recipe; keeps a hostile document from exhausting the stack
MAX_NODES = 200_000  # values after expanding aliases (a "billion laughs" document)


def _scalar(node: yaml.ScalarNode) -> Any:
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    _CONSTRUCTOR.constructed_objects.clear()
    return value


class _TooLarge(Exception):
    pass


def _build(node: yaml.Node, path: PathKey, doc: YamlDocument,
           ancestors: frozenset[int] = frozenset(), budget: list[int] | None = None) -> Any:
    """Plain data from a node; problems (not exceptions) for what a recipe cannot hold:
    tags other than plain JSON-like scalars, aliases that contain themselves, nesting deeper
    than MAX_DEPTH, more than MAX_NODES values once aliases are expanded."""
    if budget is None:
        budget = [MAX_NODES]
        try:
            return _build(node, path, doc, ancestors, budget)
        except _TooLarge:
            doc.problems.append(f"{doc.path}:1:1: the document expands to more than "
                                f"{MAX_NODES} values (aliases?); a recipe is much smaller")
            return None
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    doc.positions[path] = _position(node)
    if id(node) in ancestors:
        doc.problems.append(f"{_where(node, path, doc)}: an alias that contains itself")
        return None
    if len(path) > MAX_DEPTH:
        doc.problems.append(f"{_where(node, path, doc)}: nested more than {MAX_DEPTH} levels "
                            f"deep")
        return None
    inner = ancestors | {id(node)}
    if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
        doc.problems.append(f"{_where(node, path, doc)}: unsupported YAML tag {node.tag!r}; a "
                            f"recipe holds plain values")
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _plain_scalar(key_node, path, doc) if isinstance(
                key_node, yaml.ScalarNode) else None
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
            result[key] = _build(value_node, child, doc, inner, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), doc, inner, budget) for i, item in enumerate(node.value)]
    return _plain_scalar(node, path, doc)


def _where(node: yaml.Node, path: PathKey, doc: YamlDocument) -> str:
    return f"{doc.path}:{_position(node).line}:{_position(node).column}: {format_path(path)}"


def _plain_scalar(node: yaml.ScalarNode, path: PathKey, doc: YamlDocument) -> Any:
    if node.tag == _TIMESTAMP:  # 2024-01-01 unquoted: keep the text (as YAML 1.2 does)
        return node.value
    if node.tag == f"{_TAG}merge":
        doc.problems.append(f"{_where(node, path, doc)}: YAML merge keys (<<) are not "
                            f"supported; write the keys out")
        return None
    if node.tag not in _PLAIN_TAGS:
        doc.problems.append(f"{_where(node, path, doc)}: unsupported YAML tag {node.tag!r}; a "
                            f"recipe holds plain values (quote text that starts with ! or &)")
        return None
    try:
        return _scalar(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        doc.problems.append(f"{_where(node, path, doc)}: cannot read the value "
                            f"{node.value!r}: {exc}")
        return None
