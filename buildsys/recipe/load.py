"""Load a recipe: parse, validate against the schema, check references, expand the matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from buildsys.errors import RecipeError
from buildsys.hashing import digest_value
from buildsys.project import BUILD_DIR, RELEASE_DIR, find_project_root
from buildsys.recipe.matrix import Variant, expand_builds
from buildsys.recipe.references import reference_problems
from buildsys.recipe.schema import schema_problems
from buildsys.recipe.yaml_source import YamlDocument, load_yaml

# build_dir / dist_dir, when a recipe sets them, are relative to the recipe's directory;
# by default the outputs go under the project root (see buildsys/project.py).
DEFAULT_SETTINGS = {"opset": 18, "timeouts": {}}


@dataclass
class Recipe:
    path: Path
    data: dict[str, Any]
    doc: YamlDocument
    variants: list[Variant] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.data["recipe"])

    @property
    def project_dir(self) -> Path:
        """The recipe's directory: its relative paths (files, steps, settings) start here."""
        return self.path.parent

    @cached_property  # walks up the directory tree; asked once per stage while planning
    def project_root(self) -> Path:
        """Where the store, build/ and release/ go (buildsys/project.py)."""
        return find_project_root(self.project_dir)

    @property
    def build_dir(self) -> Path:
        """Every stage's outputs and the logs: build/<recipe>/ under the project root."""
        chosen = self.settings.get("build_dir")
        return self.project_dir / chosen if chosen else self.project_root / BUILD_DIR / self.name

    @property
    def release_dir(self) -> Path:
        """Release archives and the release index: release/<recipe>/ under the project root."""
        chosen = self.settings.get("dist_dir")
        return (self.project_dir / chosen if chosen
                else self.project_root / RELEASE_DIR / self.name)

    @property
    def settings(self) -> dict[str, Any]:
        return {**DEFAULT_SETTINGS, **(self.data.get("settings") or {})}

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def section(self, name: str) -> dict[str, Any]:
        return self.data.get(name) or {}

    def digest(self) -> str:
        """Digest of the recipe's meaning (formatting and comments do not count)."""
        return digest_value(self.data)


def load_recipe(path: Path | str, groups: frozenset[str] = frozenset()) -> Recipe:
    """Return the validated recipe or raise RecipeError listing every problem found."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    doc = load_yaml(path)
    problems = list(doc.problems)
    if doc.data is not None and not isinstance(doc.data, dict):
        problems.append(f"{path}:1:1: a recipe is a mapping (key: value), got "
                        f"{type(doc.data).__name__}")
    if problems:
        raise RecipeError(problems)
    problems = schema_problems(doc)
    if problems:
        raise RecipeError(problems)
    problems = reference_problems(doc, path.resolve().parent)
    if problems:
        raise RecipeError(problems)
    recipe = Recipe(path=path.resolve(), data=doc.data, doc=doc)
    recipe.variants = expand_builds(doc.data, groups)
    unknown = groups - {e.get("group") for e in doc.data.get("builds") or []} - {"all"}
    if unknown:
        declared = sorted({e["group"] for e in doc.data.get("builds") or [] if e.get("group")})
        raise RecipeError([f"{path}: no builds entry has group {', '.join(sorted(unknown))}; "
                           f"groups: {', '.join(declared) or 'none'}"])
    return recipe
