"""Where a project's generated files go: one store per project, one folder per recipe.

The project root is the nearest directory at or above the recipe that holds `.git`,
`pyproject.toml` or `modelbuild.toml` (the recipe's own directory when none does). Under it:

    .cache/               the store, shared by every recipe of the project
    build/<recipe>/       every stage's outputs and logs
    release/<recipe>/     release archives, index.json, README.md

`release/` rather than `dist/`, which Python packaging fills with wheels. The lock file stays
beside its recipe: it is committed with it.
"""

from __future__ import annotations

from pathlib import Path

ROOT_MARKERS = (".git", "pyproject.toml", "modelbuild.toml")
STORE_DIR = ".cache"
BUILD_DIR = "build"
RELEASE_DIR = "release"


def find_project_root(start: Path) -> Path:
    """The nearest directory at or above `start` holding a root marker, else `start`."""
    start = Path(start).resolve()
    for directory in (start, *start.parents):
        if any((directory / marker).exists() for marker in ROOT_MARKERS):
            return directory
    return start
