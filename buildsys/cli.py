"""`modelbuild` command line. Exit codes: 0 ok, 1 a stage or check failed, 2 usage or recipe.

Only cheap modules are imported here: a no-op rebuild must not import torch or onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import Interrupted, ModelbuildError, RecipeError, UsageError

if TYPE_CHECKING:
    from buildsys.plan.plan_cache import PlanCache

SUBCOMMANDS = {"validate", "graph", "cache", "devices", "report"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelbuild",
        description="Build on-device model artifacts from a recipe, incrementally.",
        epilog="Other commands: modelbuild validate RECIPE | graph RECIPE | "
               "cache info|verify|gc|push | devices | report RECIPE",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("patterns", nargs="*", help="build only matching stages (glob over "
                        "stage ids, e.g. 'ffnet_40s/w8a8/*') and what they need")
    parser.add_argument("--plan", action="store_true", help="show what would run and why; "
                        "run nothing")
    parser.add_argument("--json", action="store_true", help="with --plan: JSON for machines")
    parser.add_argument("--explain", metavar="STAGE", help="print the ingredients of a "
                        "stage's key")
    parser.add_argument("-j", "--jobs", type=int, default=0, help="stages at once "
                        "(default: one per core; threads are shared out)")
    parser.add_argument("-k", "--keep-going", action="store_true", help="go on with "
                        "independent stages after a failure")
    parser.add_argument("--force", action="append", default=[], metavar="PATTERN",
                        help="re-run matching stages even if cached (repeatable)")
    parser.add_argument("--check", action="store_true", help="fail if any output differs "
                        "from the lock file (the lock is not updated)")
    parser.add_argument("--report", type=Path, help="write a JSON report of every stage")
    parser.add_argument("--cache-dir", help="store location (default: .cache/ at the "
                        "project root, or $MODELBUILD_CACHE_DIR)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME",
                        help="also build the builds entries of this group (repeatable; "
                             "'all' for every group)")
    parser.add_argument("--offline", action="store_true", help="plan AI Hub stages as skipped")
    parser.add_argument("--run-under", metavar="COMMAND", help="start every stage worker "
                        "(and warm worker) under this command, e.g. 'qemu-x86_64 -cpu Haswell' "
                        "to build on another CPU model, or 'nice -n 10'")
    parser.add_argument("--remote", metavar="URL", help="shared remote cache: s3://BUCKET/PREFIX"
                        " (credentials from AWS_* or a profile) or a directory (default: "
                        "$MODELBUILD_REMOTE)")
    parser.add_argument("--remote-read-only", action="store_true", help="use the remote cache "
                        "but never write to it")
    parser.add_argument("--no-remote", action="store_true", help="ignore --remote and "
                        "$MODELBUILD_REMOTE")
    parser.add_argument("--remote-required", action="store_true", help="fail the build if "
                        "the remote cache fails (default: build locally with a warning)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run the stages on "
                        "this Dask cluster (default: $MODELBUILD_SCHEDULER); needs --remote")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="run the stages "
                        "on a Dask LocalCluster of N single-threaded workers in this build's "
                        "process (each stage still in a process of its own), sharing this "
                        "machine's store")
    parser.add_argument("--summary", type=Path, metavar="FILE.md", help="write the release "
                        "table as Markdown (e.g. for $GITHUB_STEP_SUMMARY)")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


class _VersionAction(argparse.Action):
    """--version, with the version read only when asked (reading distribution metadata costs
    a no-op build more than the rest of its answer)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def _version() -> str:
    """The installed distribution's version (one source of truth: pyproject.toml)."""
    from importlib import metadata

    try:
        return metadata.version("modelbuild")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore
    try:
        if argv and argv[0] in SUBCOMMANDS:
            from buildsys.commands import run_subcommand

            return run_subcommand(argv[0], argv[1:])
        return _build(build_parser().parse_intermixed_args(argv))
    except RecipeError as exc:
        print(f"error: the recipe has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    except ModelbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk, permissions: outside any stage (those fail alone)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before or after the executor (which handles its own)
        print("error: interrupted: finished stages are cached; run again to resume",
              file=sys.stderr)
        return 130


def _build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    plan_cache = _noop_stamp(args)
    if plan_cache is not None:
        answer = plan_cache.answer()
        if answer is not None:  # nothing the plan read has changed: nothing to do
            if not args.quiet:
                if answer.get("devices"):
                    print(answer["devices"], file=sys.stderr)
                print(f"{answer['summary']} in {time.monotonic() - started:.1f} s",
                      file=sys.stderr)
            return 0
        if os.environ.get("MODELBUILD_EXPLAIN_NOOP"):
            print(f"plan cache: planning fully: {plan_cache.miss}", file=sys.stderr)

    from buildsys.build import (
        BuildOptions,
        attach_remote,
        open_store,
        plan_build,
        run_build,
        unplaceable_stages,
    )
    from buildsys.recipe.load import load_recipe

    recipe = load_recipe(args.recipe, frozenset(args.group))
    options = BuildOptions(
        patterns=args.patterns, force=args.force, jobs=args.jobs, keep_going=args.keep_going,
        check=args.check, report=args.report, cache_dir=args.cache_dir, quiet=args.quiet,
        verbose=args.verbose, offline=args.offline, remote=args.remote,
        no_remote=args.no_remote, remote_read_only=args.remote_read_only,
        remote_required=args.remote_required, summary=args.summary,
        run_under=shlex.split(args.run_under) if args.run_under else [],
        scheduler=args.scheduler, workers=args.workers,
        plan_cache=plan_cache,
    )
    if args.workers < 0:
        raise UsageError("--workers must be ≥ 1")
    if args.jobs < 0:
        raise UsageError("--jobs must be ≥ 1")
    if options.run_under and shutil.which(options.run_under[0]) is None:
        raise UsageError(f"--run-under: {options.run_under[0]!r} is not an executable on PATH")
    if args.plan or args.explain:
        from buildsys.plan import render

        store = open_store(recipe, args.cache_dir)
        try:
            attach_remote(store, options)
            plan = plan_build(recipe, store, options)
            unplaceable = unplaceable_stages(store, options, plan) if args.plan else {}
        finally:
            store.close()
        if args.explain:
            if args.explain not in plan.stages:
                raise UsageError(f"no stage {args.explain!r}; see --plan for stage ids")
            print(render.explain(plan, args.explain))
        else:
            print(render.plan_json(plan) if args.json else render.plan_table(plan))
            for stage_id, why in sorted(unplaceable.items()):
                print(f"warning: {stage_id}: {why}", file=sys.stderr)
        return 0
    return run_build(recipe, options)


def _noop_stamp(args: argparse.Namespace) -> PlanCache | None:
    """The plan cache for a plain build; None when an option needs the full plan (it
    compares, forces, reports, prints every stage, or talks to a remote cache)."""
    if args.plan or args.explain or args.check or args.force or args.report or args.summary \
            or args.verbose or args.run_under or args.remote_required or args.jobs < 0:
        return None
    if os.environ.get("MODELBUILD_PLAN_CACHE", "").strip() == "0":  # always plan fully
        return None
    if not args.no_remote and (args.remote or os.environ.get("MODELBUILD_REMOTE", "").strip()):
        return None
    from buildsys.plan.plan_cache import PlanCache, cli_options

    return PlanCache(args.recipe, cli_options(args.patterns, args.group, args.offline,
                                              args.cache_dir))
