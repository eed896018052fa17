"""The other subcommands: validate, graph, cache info|verify|gc, devices, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from buildsys.errors import UsageError

DEVICE_CACHE = Path("aihub") / "devices.json"  # inside the store


def project_store_dir(override: str | None = None) -> Path:
    """The store of the project the current directory is in (or --cache-dir / the env)."""
    from buildsys.project import find_project_root
    from buildsys.store.store import default_cache_dir

    return default_cache_dir(find_project_root(Path.cwd()), override)


def device_cache_path() -> Path:
    return project_store_dir() / DEVICE_CACHE


def run_subcommand(name: str, argv: list[str]) -> int:
    return {"validate": _validate, "graph": _graph, "cache": _cache,
            "devices": _devices, "report": _report}[name](argv)


def _validate(argv: list[str]) -> int:
    from buildsys.recipe.load import load_recipe

    parser = argparse.ArgumentParser(prog="modelbuild validate",
                                     description="Check a recipe without building.")
    parser.add_argument("recipe", type=Path)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: ok ({len(recipe.variants)} variants, "
          f"{len(recipe.section('steps'))} steps)")
    return 0


def _graph(argv: list[str]) -> int:
    from buildsys.plan.graph import build_graph
    from buildsys.plan.render import to_dot, to_mermaid
    from buildsys.recipe.load import load_recipe

    parser = argparse.ArgumentParser(prog="modelbuild graph",
                                     description="Write the stage graph as DOT and Mermaid.")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--format", choices=["dot", "mermaid", "both"], default="both")
    parser.add_argument("-o", "--output", type=Path, help="file stem (writes .dot / .mmd); "
                        "default: print to stdout")
    args = parser.parse_args(argv)
    graph = build_graph(load_recipe(args.recipe))
    texts = {"dot": to_dot(graph), "mermaid": to_mermaid(graph)}
    chosen = ["dot", "mermaid"] if args.format == "both" else [args.format]
    for fmt in chosen:
        if args.output:
            path = args.output.with_suffix(".dot" if fmt == "dot" else ".mmd")
            path.write_text(texts[fmt])
            print(f"wrote {path}")
        else:
            sys.stdout.write(texts[fmt])
    return 0


def _cache(argv: list[str]) -> int:
    from buildsys.store import maintenance

    parser = argparse.ArgumentParser(prog="modelbuild cache", description="Inspect the store; "
                                     "push a recipe's cached results to a remote cache.")
    parser.add_argument("action", choices=["info", "verify", "gc", "push"])
    parser.add_argument("recipe", type=Path, nargs="?", help="push: the recipe whose cached "
                        "stages to upload")
    parser.add_argument("--remote", metavar="URL", help="push: the remote cache (default: "
                        "$MODELBUILD_REMOTE)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME",
                        help="push: also the builds entries of this group (as when building)")
    parser.add_argument("--cache-dir", help="store location (default: .cache/ at the root of "
                        "the project holding the current directory, or $MODELBUILD_CACHE_DIR)")
    parser.add_argument("--lock", type=Path, action="append", default=[],
                        help="gc: keep what these lock files reference (default: every "
                             "recipe's lock file in the project)")
    parser.add_argument("--max-size", help="gc: then trim least recently built records until "
                        "the store is under this size (e.g. 5G, 500M)")
    args = parser.parse_args(argv)
    if args.action == "push":
        from buildsys.push import push_recipe

        if args.recipe is None:
            raise UsageError("cache push: which recipe? (modelbuild cache push RECIPE)")
        return push_recipe(args.recipe, args.cache_dir, args.remote, frozenset(args.group))
    from buildsys.project import find_project_root

    return maintenance.run(args, find_project_root(Path.cwd()))


def _devices(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="modelbuild devices",
                                     description="List AI Hub devices (cached for a day).")
    parser.add_argument("--attribute", action="append", default=[],
                        help="filter, e.g. chipset:qualcomm-snapdragon-8gen2 (repeatable)")
    parser.add_argument("--refresh", action="store_true", help="ignore the one-day cache")
    args = parser.parse_args(argv)
    from buildsys.backends.aihub.device_table import print_devices

    try:
        return print_devices(args.attribute, device_cache_path(), refresh=args.refresh)
    except ImportError as exc:
        raise UsageError(f"AI Hub support is not available: {exc}") from exc


def _report(argv: list[str]) -> int:
    from buildsys.build import open_store
    from buildsys.recipe.load import load_recipe
    from buildsys.report import page_path
    from buildsys.report.page import write_page

    parser = argparse.ArgumentParser(
        prog="modelbuild report",
        description="Write the HTML report page beside the release index, from what the last "
                    "build left in the store (nothing is built).")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="where to write the page "
                        "(default: report.html beside the release index)")
    parser.add_argument("--build-report", type=Path, help="the timeline from this JSON build "
                        "report (--report) instead of the last build's")
    parser.add_argument("--cache-dir", help="store location (default: .cache beside the "
                        "recipe, or $MODELBUILD_CACHE_DIR)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME",
                        help="the recipe's groups the build used (as for a build)")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, frozenset(args.group))
    build_report = None
    if args.build_report:
        import json

        try:
            build_report = json.loads(args.build_report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the build report {args.build_report}: {exc}") \
                from exc
    store = open_store(recipe, args.cache_dir)
    try:
        page = write_page(recipe, store, build_report, args.output or page_path(recipe))
    finally:
        store.close()
    print(f"wrote {page.path} ({page.bytes / 1e6:.2f} MB, {page.charts} charts, "
          f"{page.seconds:.1f} s)")
    return 0
