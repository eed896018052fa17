"""JSON Schema validation of a recipe, with errors mapped back to YAML positions."""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from buildsys.recipe.yaml_source import YamlDocument, format_path

# Shipped inside the package (a wheel has no repository around it); the copy in the
# repository's top-level schemas/ is for editors and must stay identical (a test checks).
SCHEMA_RESOURCE = ("schemas", "recipe.schema.json")


@cache
def recipe_schema() -> dict[str, Any]:
    schema = resources.files("buildsys").joinpath(*SCHEMA_RESOURCE)
    return json.loads(schema.read_text(encoding="utf-8"))


@cache
def _validator() -> Any:
    import jsonschema  # imported here: only recipe loading pays for it

    return jsonschema.Draft202012Validator(recipe_schema())


def schema_problems(doc: YamlDocument) -> list[str]:
    """Every schema violation, each `file:line:col: key.path: what was expected`."""
    problems: list[str] = []
    for error in sorted(_validator().iter_errors(doc.data), key=lambda e: list(map(str, e.path))):
        problems.extend(_describe(doc, error))
    return problems


def _describe(doc: YamlDocument, error: Any) -> list[str]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        out = []
        for key in sorted(set(error.instance) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = (f"; did you mean {hint[0]!r}?" if hint
                          else f"; allowed: {', '.join(allowed)}")
            out.append(
                f"{doc.where((*path, key), key=True)}: {format_path((*path, key))}: "
                f"unknown key {key!r}{suggestion}"
            )
        return out
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        options = [next(iter(s["required"])) for s in error.validator_value if "required" in s]
        if options:
            given = [k for k in options if k in error.instance]
            what = f"has {' and '.join(given)}" if given else "has none"
            return [
                f"{doc.where(path)}: {format_path(path)}: needs exactly one of "
                f"{', '.join(options)} ({what})"
            ]
    if error.validator == "propertyNames":
        return [f"{doc.where(path)}: {format_path(path)}: invalid name: {error.message}"]
    if error.validator == "enum":
        hint = difflib.get_close_matches(str(error.instance), list(map(str, error.validator_value)))
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        allowed = ", ".join(map(str, error.validator_value))
        return [
            f"{doc.where(path)}: {format_path(path)}: {error.instance!r} is not one of "
            f"{allowed}{suggestion}"
        ]
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [
            f"{doc.where(path)}: {format_path(path)}: expected {expected}, "
            f"got {type(error.instance).__name__} {error.instance!r}"
        ]
    return [f"{doc.where(path)}: {format_path(path)}: {error.message}"]
