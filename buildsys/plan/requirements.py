"""Before anything runs: is every toolchain the selected stages import installed?

A missing one is a usage error (exit 2) naming the extra that installs it, instead of an
ImportError deep inside a worker after the cheap stages already ran.
"""

from __future__ import annotations

from collections.abc import Collection

import networkx as nx

from buildsys.errors import UsageError
from buildsys.stages import stage_class
from buildsys.toolchain import install_hint, missing_extras

SHOWN_STAGES = 3  # stage ids named per missing distribution; the rest are counted


def check_toolchains(graph: nx.DiGraph, skip: Collection[str] = ()) -> None:
    """Raise UsageError if a stage of `graph` (but those in `skip`, which will not run)
    needs a distribution that is not installed."""
    needed_by: dict[str, list[str]] = {}
    for stage_id in sorted(graph.nodes):
        if stage_id in skip:
            continue
        node = graph.nodes[stage_id]["node"]
        for distribution in stage_class(node.kind).requirements(node.params):
            needed_by.setdefault(distribution, []).append(stage_id)
    missing = missing_extras(needed_by)
    if not missing:
        return
    lines = []
    for distribution, extra in missing.items():
        stages = needed_by[distribution]
        shown = ", ".join(stages[:SHOWN_STAGES])
        more = f" and {len(stages) - SHOWN_STAGES} more" if len(stages) > SHOWN_STAGES else ""
        lines.append(f"  {distribution} (extra '{extra}'), needed by {shown}{more}")
    raise UsageError("this build needs toolchains that are not installed:\n" + "\n".join(lines)
                     + f"\ninstall them with: {install_hint(missing.values())}")
