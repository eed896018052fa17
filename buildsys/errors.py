"""Exceptions that carry a message meant for the user (exit codes live in the CLI)."""

from __future__ import annotations


class ModelbuildError(Exception):
    """Base class: the message is complete and user-facing."""


class RecipeError(ModelbuildError):
    """The recipe is invalid; carries every problem found, each with its position."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(ModelbuildError):
    """A command-line usage problem (exit code 2)."""


class StageError(ModelbuildError):
    """A stage failed for a reason the user can fix (bad weights, wrong shape, ...)."""


class StoreError(ModelbuildError):
    """The cache store could not be read or written (disk full, permissions, ...)."""


class Interrupted(ModelbuildError):
    """The user stopped the build (Ctrl-C); finished stages are stored (exit code 130)."""
