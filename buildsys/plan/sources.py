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


def module_files(module: str, project_dir: Path) -> list[Path]:
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
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
