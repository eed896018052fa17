"""A stage's status, one vocabulary from the plan to the report.

A `StrEnum`: each member is its own lower-case string, so JSON reports, lock comparisons and
messages read exactly as before ("cached", "failed", ...).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RUN = "run"  # planned: it runs (or turns out cached once its inputs are known)
    BUILT = "built"  # it ran and its outputs are stored
    CACHED = "cached"  # its record for the same key was reused
    REMOTE = "remote"  # planned: the remote cache has its record (downloaded where needed)
    SKIPPED = "skipped"  # not run: AI Hub off, or an upstream stage failed or was skipped
    FAILED = "failed"  # it failed, or cannot run (e.g. no AI Hub token)


# What a finished build reports, in this order.
OUTCOMES = (Status.BUILT, Status.CACHED, Status.FAILED, Status.SKIPPED)
