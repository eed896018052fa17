"""Find the source files behind a `module:callable` so editing model code rebuilds the model.

A module's file and, recursively, the modules of the same package it imports (read
with `ast`, never executed), so `buildsys.zoo.ffnet` brings `_ffnet_modules.py` along.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

from buildsys.errors import RecipeError
from buildsys.plan.node import FileRef

# module, project → (its files, their stat fingerprints): one plan asks for the same module
# once per variant and stage (FFNet: 36 times), and finding it walks sys.path every time.
_FOUND: dict[tuple[str, Path], tuple[list[Path], list[tuple[int, ...] | None]]] = {}


def _fingerprints(paths: list[Path]) -> list[tuple[int, ...] | None]:
    found: list[tuple[int, ...] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return found


def module_files(module: str, project_dir: Path) -> list[Path]:
    """The module's file and those of the same package it imports; found again only when
    one of them changed since it was last asked (an edit may add an import)."""
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    known = _FOUND.get((module, project_dir))
    if known is not None and _fingerprints(known[0]) == known[1]:
        return list(known[0])
    files = _find_module_files(module, project_dir)
    _FOUND[(module, project_dir)] = (files, _fingerprints(files))
    return list(files)


def _find_module_files(module: str, project_dir: Path) -> list[Path]:
    # Follow imports within the module's own package only (not the whole distribution).
    root = module.rpartition(".")[0] or module
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            if name == module:
                raise RecipeError([f"python module {module!r} not found (looked in "
                                   f"{project_dir} and the installed packages)"])
            continue
        path = Path(spec.origin)
        seen[name] = path
        pending.extend(n for n in _imports(path, name, spec.submodule_search_locations)
                       if n == root or n.startswith(root + "."))
    return sorted(set(seen.values()))


def _imports(path: Path, name: str, is_package: object) -> list[str]:
    # One plan asks for the same modules once per variant and stage (FFNet: 36 times): each
    # file is parsed once per version of it (its stat fingerprint), not once per question.
    try:
        st = os.stat(path)
    except OSError:
        return []
    return list(_parsed_imports(path, name, bool(is_package),
                                (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)))


@lru_cache(maxsize=1024)
def _parsed_imports(path: Path, name: str, is_package: bool,
                    _fingerprint: tuple[int, int, int, int]) -> tuple[str, ...]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ()
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return tuple(found)


def code_inputs(entry_point: str, project: Path) -> dict[str, FileRef]:
    """The project files of `module:callable`'s module (and what it imports from the
    project), as stage inputs named `code/<path>`: editing one re-runs the stage."""
    return {f"code/{code_name(path, project)}": FileRef(path)
            for path in module_files(entry_point.partition(":")[0], project)}


def code_name(path: Path, project: Path) -> str:
    """A stable, machine-independent name for a source file (no absolute paths in keys)."""
    try:
        return path.resolve().relative_to(project.resolve()).as_posix()
    except ValueError:
        parts = path.resolve().parts
        return "/".join(parts[-3:])
