"""The remote cache on a fresh checkout: what a CI runner with an empty store pays when a
loopback SeaweedFS S3 server already holds the recipe's results.

    python benchmarks/remote.py [RECIPE]        # default recipes/ffnet.yaml

1. Warm the remote: push what the recipe's store holds (`.cache` at its project root, or
   $MODELBUILD_CACHE_DIR), then build a
   seeding copy with the remote (remote hits for what was pushed; anything missing is built
   and uploaded). The user's project and store are only read.
2. A fresh copy of the project (empty store) builds with the remote: wall time, stages run,
   blobs and bytes downloaded (against everything the remote holds).
3. The same with --remote-read-only, in another fresh copy.
4. No-op rebuilds of copy 2: with the remote configured (requests made: should be 0) and with
   --no-remote, best of 3 each.

Target (issue 14): the FFNet default recipe in ≤ 60 s on a 2-core machine at step 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from buildsys.project import find_project_root  # noqa: E402
from tests.remote.conftest import CREDENTIALS, start_seaweed  # noqa: E402

SKIP = {"build", "release", "dist", ".cache"}


def fresh_copy(recipe: Path, where: Path) -> Path:
    """The recipe's project as a fresh checkout would have it: no build, dist or store."""
    shutil.copytree(recipe.parent, where, ignore=lambda d, names: [
        n for n in names if Path(d) == recipe.parent and (n in SKIP or n.endswith(".tmp"))])
    return where / recipe.name


def modelbuild(recipe: Path, *args: str) -> tuple[float, dict[str, Any], str]:
    """Run the CLI; (wall seconds, its JSON report, stderr)."""
    report = recipe.parent / "bench-report.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), **CREDENTIALS}
    env.pop("MODELBUILD_CACHE_DIR", None)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "buildsys", recipe.name, "-q",
                             "--report", str(report), *args], cwd=recipe.parent, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"modelbuild {recipe.name} {' '.join(args)} failed:\n"
                         f"{result.stderr[-3000:]}")
    return wall, json.loads(report.read_text()), result.stderr


def push(recipe: Path, url: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **CREDENTIALS}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "buildsys", "cache", "push", recipe.name,
                             "--remote", url], cwd=recipe.parent, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"cache push failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout.strip()


def remote_size(server: Any, prefix: str) -> tuple[int, int]:
    import obstore

    sizes = [o["size"] for batch in obstore.list(server.store(prefix)) for o in batch
             if o["path"].startswith("cas/")]
    return len(sizes), sum(sizes)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, nargs="?", default=REPO / "recipes" / "ffnet.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    figures: dict[str, Any] = {"recipe": str(recipe.relative_to(REPO) if recipe.is_relative_to(
        REPO) else recipe), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_seaweed(tmp / "seaweedfs")
        url = server.url("bench")
        try:
            store = Path(os.environ.get("MODELBUILD_CACHE_DIR")
                         or find_project_root(recipe.parent) / ".cache")
            if store.exists():
                seconds, said = push(recipe, url)
                print(f"seed: cache push from {store} in {seconds:.1f} s: {said}")
            seed = fresh_copy(recipe, tmp / "seed")
            seconds, report, _ = modelbuild(seed, "--remote", url)
            built = report["counts"].get("built", 0)
            print(f"seed: build with the remote in {seconds:.1f} s ({built} stage(s) built "
                  f"and uploaded)")
            blobs, total = remote_size(server, "bench")
            figures["remote_blobs"], figures["remote_bytes"] = blobs, total
            print(f"remote holds {blobs} blobs, {mb(total)}")

            first_copy = None
            for label, extra in (("fresh checkout", ()),
                                 ("fresh checkout, --remote-read-only",
                                  ("--remote-read-only",))):
                copy = fresh_copy(recipe, tmp / label.replace(" ", "_").replace(",", ""))
                seconds, report, _ = modelbuild(copy, "--remote", url, *extra)
                remote = report["remote"]
                row = {"wall_s": round(seconds, 2), "built": report["counts"].get("built", 0),
                       "cached": report["counts"].get("cached", 0),
                       "blobs_downloaded": remote["blobs_downloaded"],
                       "bytes_downloaded": remote["bytes_downloaded"],
                       "requests": remote["requests"]}
                figures[label] = row
                print(f"{label:<36} {seconds:6.1f} s   {row['built']} built, "
                      f"{row['cached']} cached   downloaded {row['blobs_downloaded']} of "
                      f"{blobs} blobs, {mb(row['bytes_downloaded'])} of {mb(total)}   "
                      f"{row['requests']} requests")
                if label == "fresh checkout":
                    first_copy = copy

            for label, extra in (("no-op, remote configured", ("--remote", url)),
                                 ("no-op, --no-remote", ("--no-remote",))):
                assert first_copy is not None
                runs = [modelbuild(first_copy, *extra) for _ in range(3)]
                best = min(r[0] for r in runs)
                requests = max(r[1].get("remote", {}).get("requests", 0) for r in runs)
                figures[label] = {"best_s": round(best, 3), "requests": requests}
                print(f"{label:<36} {best:6.2f} s (best of 3)   {requests} remote requests")
        finally:
            server.kill()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
