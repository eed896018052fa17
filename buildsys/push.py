"""`modelbuild cache push RECIPE`: upload what the local store holds for a recipe.

Every stage of the recipe's current plan that is cached here is pushed — blobs first, then
its record, create-only — so a store filled without a remote (or by a read-only build) can
seed a shared cache. Nothing is built and nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

from buildsys.errors import UsageError


def push_recipe(recipe_path: Path, cache_dir: str | None, remote_url: str | None,
                groups: frozenset[str] = frozenset()) -> int:
    from buildsys.build import BuildOptions, open_store, plan_build
    from buildsys.plan.planner import CACHED
    from buildsys.recipe.load import load_recipe
    from buildsys.store.remote import RemoteTier, human_bytes, remote_from_env

    url = remote_from_env(remote_url)
    if url is None:
        raise UsageError("cache push: no remote cache given (--remote URL or MODELBUILD_REMOTE)")
    recipe = load_recipe(recipe_path, groups)
    store = open_store(recipe, cache_dir)
    try:
        # Planned against the local store alone (no remote attached yet, AI Hub not asked).
        plan = plan_build(recipe, store, BuildOptions(cache_dir=cache_dir, offline=True))
        cached = [s for s in plan.order if plan.stages[s].status == CACHED]
        remote = RemoteTier.open(url, writable=True, required=True)
        store.attach_remote(remote)
        for stage_id in cached:
            planned = plan.stages[stage_id]
            assert planned.key is not None and planned.record is not None
            store.push(planned.key, planned.record, planned.node.measurements)
        store.finish_uploads()
        stats = remote.stats
        if remote.failure or not remote.writable:
            why = remote.failure or "it refused a write (permissions?)"
            print(f"error: cache push: remote cache {remote.name}: {why}", file=sys.stderr)
            return 1
        left = len(plan.order) - len(cached)
        print(f"pushed {len(cached)} cached stage(s) of {recipe.name} to {remote.name}: "
              f"{stats.records_uploaded} new record(s), {stats.blobs_uploaded} blob(s) "
              f"({human_bytes(stats.bytes_uploaded)}) uploaded, the rest already there"
              + (f"; {left} stage(s) not built here, not pushed" if left else ""))
        return 0
    finally:
        store.close()
