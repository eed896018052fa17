"""`modelbuild cache info|verify|gc`."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from buildsys.errors import UsageError
from buildsys.store.lock import read_lock
from buildsys.store.store import Store, default_cache_dir

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text.upper())
    if not match:
        raise UsageError(f"--max-size {text!r}: expected a size like 500M or 5G")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def run(args: argparse.Namespace, project_root: Path) -> int:
    """`project_root`: the project the store belongs to (where gc looks for lock files)."""
    args.lock = list(args.lock) or default_lock_files(project_root)
    store = Store(default_cache_dir(project_root, args.cache_dir))
    try:
        return {"info": info, "verify": verify, "gc": gc}[args.action](store, args)
    finally:
        store.close()


def info(store: Store, args: argparse.Namespace) -> int:
    digests = list(store.blobs.digests())
    records = store.index.records()
    print(f"store    {store.root}")
    print(f"records  {len(records)}")
    print(f"blobs    {len(digests)} ({human(sum(store.blobs.size(d) for d in digests))})")
    return 0


def verify(store: Store, args: argparse.Namespace) -> int:
    """Check the index (database integrity, every entry's checksum), re-hash every blob; drop
    damaged entries and records that point at missing or corrupt blobs."""
    index_problems = store.index.check()
    for problem in index_problems:
        print(problem)
    bad_blobs = [d for d in store.blobs.digests() if not store.blobs.verify(d)]
    for digest in bad_blobs:
        print(f"corrupt blob {digest} (removed)")
        store.blobs.delete(digest)
    broken = 0
    for key, record in store.index.records().items():
        missing = [n for n, o in record["outputs"].items() if not store.blobs.has(o["digest"])]
        if missing:
            broken += 1
            print(f"record {record.get('stage_id', key[:12])}: missing {', '.join(missing)} "
                  f"(removed; the stage will run again)")
            store.index.delete_record(key)
    print(f"verified: {len(bad_blobs)} corrupt blob(s), {broken} broken record(s), "
          f"{len(index_problems)} index problem(s)")
    return 1 if bad_blobs or broken or index_problems else 0


# Not searched for lock files: generated or third-party trees (hidden ones are skipped too).
UNSEARCHED = {"build", "release", "dist", "node_modules", "__pycache__"}


def default_lock_files(root: Path) -> list[Path]:
    """Every recipe's lock file in the project (`<name>.lock` beside `<name>.yaml`): the store
    is shared by all of them, so gc must keep what any of them references."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in UNSEARCHED]
        for name in files:
            path = Path(directory) / name
            if path.suffix == ".lock" and any(path.with_suffix(s).is_file()
                                              for s in (".yaml", ".yml")):
                found.append(path)
    return sorted(found)


def gc(store: Store, args: argparse.Namespace) -> int:
    """Keep records named by the lock files (and their blobs); delete the rest.

    With --max-size, also drop the oldest kept records until the store fits.
    """
    keep_keys = {entry["key"] for lock in args.lock for entry in read_lock(lock).values()
                 if isinstance(entry, dict) and "key" in entry}
    records = store.index.records()
    removed = 0
    for key in list(records):
        if key not in keep_keys:
            store.index.delete_record(key)
            del records[key]
            removed += 1
    if args.max_size:
        limit = parse_size(args.max_size)
        by_age = sorted(records, key=lambda k: records[k].get("built_at_order", 0))
        while by_age and _live_size(store, records) > limit:
            key = by_age.pop(0)
            store.index.delete_record(key)
            del records[key]
            removed += 1
    store.index.forget_seen_remote(keep_keys)  # what a remote cache answered, machine-local
    live = {o["digest"] for r in records.values() for o in r["outputs"].values()}
    store.sweep_tmp()  # scratch directories and half-written blobs of killed builds
    freed = 0
    for digest in list(store.blobs.digests()):
        if digest not in live:
            freed += store.blobs.size(digest)
            store.blobs.delete(digest)
    print(f"gc: removed {removed} record(s), freed {human(freed)}; "
          f"kept {len(records)} record(s)")
    return 0


def _live_size(store: Store, records: dict[str, dict]) -> int:
    live = {o["digest"]: o["size"] for r in records.values() for o in r["outputs"].values()}
    return sum(live.values())
