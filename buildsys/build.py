"""One build, start to end: recipe → graph → plan → execute → lock → report."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import ModelbuildError, RecipeError, StageError, UsageError
from buildsys.execute.report import device_summary, report_dict, summary_line, write_report
from buildsys.execute.runner import ExecuteOptions, Executor, Outcome
from buildsys.plan.graph import build_graph, select
from buildsys.plan.hardware import blocked_hardware_stages
from buildsys.plan.plan_cache import PlanCache, save_after_build
from buildsys.plan.planner import Plan, make_plan_with_remote
from buildsys.plan.remote import remote_stage_ids, switched_off
from buildsys.plan.requirements import check_toolchains
from buildsys.plan.status import Status
from buildsys.recipe.load import Recipe
from buildsys.stages import lock_notes
from buildsys.store.lock import lock_entry, read_lock, write_lock
from buildsys.store.remote import RemoteUnavailable, remote_from_env
from buildsys.store.store import Store, default_cache_dir

if TYPE_CHECKING:
    from buildsys.execute.dask_pool import DaskPool


@dataclass
class BuildOptions:
    patterns: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)
    jobs: int = 0  # 0: one per core
    keep_going: bool = False
    check: bool = False
    report: Path | None = None
    cache_dir: str | None = None
    quiet: bool = False
    verbose: bool = False
    offline: bool = False
    inline: bool = False  # tests only: run stages in this process
    run_under: list[str] = field(default_factory=list)  # a command that starts each worker
    remote: str | None = None  # remote cache URL (else $MODELBUILD_REMOTE)
    no_remote: bool = False
    remote_read_only: bool = False
    remote_required: bool = False
    summary: Path | None = None  # write the release table (Markdown) here
    scheduler: str | None = None  # a Dask scheduler's address (else $MODELBUILD_SCHEDULER)
    workers: int = 0  # start a LocalCluster of this many single-threaded workers
    # The no-op stamp to refresh after this build (plan/plan_cache.py); None: leave it.
    plan_cache: PlanCache | None = None


def open_store(recipe: Recipe, cache_dir: str | None) -> Store:
    return Store(default_cache_dir(recipe.project_root, cache_dir))


def attach_remote(store: Store, options: BuildOptions) -> None:
    """Put the remote cache (--remote or $MODELBUILD_REMOTE) behind the local store."""
    from buildsys.store.remote import RemoteTier

    url = None if options.no_remote else remote_from_env(options.remote)
    if url is None:
        if options.remote_required:
            raise UsageError("--remote-required: no remote cache given (--remote URL or "
                             "MODELBUILD_REMOTE)" + (", and --no-remote" if options.no_remote
                                                     else ""))
        return
    store.attach_remote(RemoteTier.open(url, writable=not options.remote_read_only,
                                        required=options.remote_required))


def open_pool(store: Store, options: BuildOptions) -> DaskPool | None:
    """The Dask pool of --scheduler or --workers, or None for the local process pool.
    A cluster's workers and this machine exchange bytes through the remote cache, so one is
    needed; the workers of --workers share this machine's store instead (and also push to a
    remote cache, as a local build does, when one is given)."""
    from buildsys.execute.dask_pool import SCHEDULER_ENV, DaskPool

    address = options.scheduler or os.environ.get(SCHEDULER_ENV, "").strip() or None
    if address is None and not options.workers:
        return None
    flag = "--workers" if options.workers else "--scheduler"
    if address is not None and options.workers:
        raise UsageError("--scheduler and --workers: give one (a running cluster, or a local "
                         "one started for this build)")
    url = None if options.no_remote else remote_from_env(options.remote)
    if url is not None and "://" not in url:  # a directory: found by the same absolute path
        url = str(Path(url).expanduser().resolve())
    if options.workers:
        writable = url is not None and store.remote is not None and store.remote.writable
        return DaskPool.start_local(options.workers, store, url if writable else None)
    if url is None or store.remote is None:
        raise UsageError(f"{flag}: stages travel to the workers through a shared cache: give "
                         f"--remote s3://BUCKET/PREFIX, or --remote DIRECTORY that this "
                         f"machine and every worker reach (or set MODELBUILD_REMOTE)")
    if not store.remote.writable:
        raise UsageError(f"{flag}: the workers upload what they build to the remote cache: "
                         f"not with --remote-read-only")
    assert address is not None
    return DaskPool.connect(address, store, url)


def unplaceable_stages(store: Store, options: BuildOptions, plan: Plan) -> dict[str, str]:
    """--plan with --scheduler: stages to run that no worker of the cluster could run (it
    offers no worker with the resources they need), stage id → why."""
    from buildsys.stages import stage_class

    if options.workers:
        return {}
    pool = open_pool(store, options)
    if pool is None:
        return {}
    try:
        needs = {stage_id: stage_class(p.node.kind).resources(p.node.params)
                 for stage_id, p in plan.stages.items() if p.status == Status.RUN}
        return {stage_id: f"no worker of the Dask cluster at {pool.address} can run it: "
                          f"{why}"
                for stage_id, why in pool.unplaceable(
                    {s: n for s, n in needs.items() if n}).items()}
    finally:
        pool.close()


def remote_failure(store: Store) -> str | None:
    """Why the build fails because of the remote: it failed and --remote-required was given."""
    remote = store.remote
    if remote is not None and remote.required and remote.failure is not None:
        return f"--remote-required: remote cache {remote.name} failed ({remote.failure})"
    return None


def blocked_stages(recipe: Recipe, graph: object, offline: bool) -> dict[str, str]:
    from buildsys.plan.remote import blocked_remote_stages

    return blocked_remote_stages(recipe, graph, offline)  # type: ignore[arg-type]


def skipped_remote_stages(graph: object, offline: bool) -> list[str]:
    """Remote stages this build skips on purpose: they need no toolchain installed."""
    return remote_stage_ids(graph) if switched_off(offline) else []  # type: ignore[arg-type]


def plan_build(recipe: Recipe, store: Store, options: BuildOptions) -> Plan:
    try:
        full = build_graph(recipe)
    except StageError as exc:  # e.g. a dataset's files, found while planning: a recipe problem
        raise RecipeError([f"{recipe.path}: {exc}"]) from exc
    graph = select(full, options.patterns)
    no_hardware = blocked_hardware_stages(graph)  # e.g. TensorRT without a GPU: no toolchain
    check_toolchains(graph, skip=[*skipped_remote_stages(graph, options.offline), *no_hardware])
    plan = make_plan_with_remote(graph, store, options.force,
                                 {**blocked_stages(recipe, graph, options.offline),
                                  **no_hardware})
    plan.all_stage_ids = set(full.nodes)
    failure = remote_failure(store)
    if failure:
        raise RemoteUnavailable(failure)
    return plan


def run_build(recipe: Recipe, options: BuildOptions) -> int:
    """Build and return the exit code: 0 ok, 1 a stage, check or lock comparison failed."""
    from buildsys.execute.progress import make_progress

    started = time.monotonic()
    if options.plan_cache is not None:
        options.plan_cache.discard()  # this build may change what the stamp describes
    store = open_store(recipe, options.cache_dir)
    pool = None
    stamp: Callable[[], bool] | None = None
    pool = None
    try:
        store.sweep_tmp()  # what killed builds left in the store's temporary area
        attach_remote(store, options)
        plan = plan_build(recipe, store, options)
        pool = open_pool(store, options)
        if pool is not None:
            pool.warm_up([(p.node.kind, p.node.params) for p in plan.stages.values()
                          if p.status == Status.RUN])
        progress = make_progress(len(plan.order), quiet=options.quiet, verbose=options.verbose)
        store.on_transfer(lambda text: progress.note("remote cache", text))
        jobs = options.jobs or len(os.sched_getaffinity(0))
        executor = Executor(plan, store, ExecuteOptions(
            build_dir=recipe.build_dir, release_dir=recipe.release_dir,
            project_dir=recipe.project_dir, jobs=jobs,
            keep_going=options.keep_going, inline=options.inline,
            run_under=options.run_under), progress, pool)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            outcomes = executor.run()
            store.finish_uploads()  # before the summary: what was pushed is counted
        finally:
            progress.close()
        previous_lock = read_lock(recipe.lock_path)
        mismatches = lock_mismatches(previous_lock, plan, outcomes) if options.check else []
        errors: list[str] = []  # the build's own files that could not be written
        if not options.check:
            try:
                update_lock(recipe, previous_lock, plan, outcomes)
            except ModelbuildError as exc:
                errors.append(str(exc))
        failure = remote_failure(store)
        if failure:
            errors.append(failure)
        wall = time.monotonic() - started
        report = report_dict(recipe.name, outcomes, wall, mismatches, started_at)
        if store.remote is not None:
            report["remote"] = store.remote.report()
        if errors:
            report.update(ok=False, errors=list(errors))
        if options.summary:
            try:
                write_summary(options.summary, recipe, plan, outcomes, wall)
            except ModelbuildError as exc:
                errors.append(str(exc))
        if options.report:
            try:
                write_report(options.report, report)
            except ModelbuildError as exc:
                errors.append(str(exc))
        print_failures(outcomes, mismatches)
        release_page(recipe, store, report, outcomes, options.quiet)
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        if not options.quiet:
            kinds = {s: plan.stages[s].node.kind for s in outcomes}
            on_devices = device_summary(outcomes, kinds)
            if on_devices:
                print(on_devices, file=sys.stderr)
            print(summary_line(outcomes, wall), file=sys.stderr)
            if store.remote is not None and (store.remote.stats.requests
                                             or store.remote.failure):
                print(store.remote.summary_line(), file=sys.stderr)
        ok = bool(report["ok"]) and not errors
        if ok and options.plan_cache is not None:
            stamp = _noop_stamp(options.plan_cache, recipe, plan, store, outcomes)
        return 0 if ok else 1
    finally:
        if pool is not None:
            pool.close()
        store.close()
        if stamp is not None:  # after close: the store as the next run finds it
            stamp()


def _noop_stamp(cache: PlanCache, recipe: Recipe, plan: Plan, store: Store,
                outcomes: dict[str, Outcome]) -> Callable[[], bool]:
    """Stamp this build for the next run's instant no-op (plan/plan_cache.py), with what a
    no-op prints about devices, and the report page (a missing one the full path writes)."""
    from buildsys.report import RELEASE_STAGE, page_path

    kinds = {s: plan.stages[s].node.kind for s in outcomes}
    pages = [page_path(recipe)] if RELEASE_STAGE in outcomes else []
    return functools.partial(save_after_build, cache, recipe, plan, store, outcomes,
                             devices=device_summary(outcomes, kinds), extra_outputs=pages)


def release_page(recipe: Recipe, store: Store, report: dict[str, object],
                 outcomes: dict[str, Outcome], quiet: bool) -> None:
    """Write the HTML report beside the release index when this build made or changed
    anything (or the page is missing); a no-op build imports nothing for it. A page that
    cannot be written is a warning: the release itself is fine."""
    from buildsys.report import RELEASE_STAGE, last_build_path, page_path

    release = outcomes.get(RELEASE_STAGE)
    if release is None or release.status not in ("built", "cached"):
        return
    ran = any(o.status == "built" for o in outcomes.values())
    if not ran and page_path(recipe).exists():
        return
    try:
        from buildsys.report.page import write_page

        # The page's timeline is the last build that ran something; kept for later renders.
        if ran or not last_build_path(recipe).exists():
            write_report(last_build_path(recipe), report)
        page = write_page(recipe, store, report if ran else None)
    except ImportError as exc:  # an engine-only install: the page needs the report extra
        if not quiet:
            print(f"note: no report page ({exc.name} is not installed: "
                  f"pip install 'modelbuild[report]')", file=sys.stderr)
        return
    except Exception as exc:  # a broken page must not fail a finished build
        reason = str(exc) if isinstance(exc, ModelbuildError) else f"{type(exc).__name__}: {exc}"
        print(f"warning: no report page ({reason}); `modelbuild report {recipe.path}` "
              f"tries again", file=sys.stderr)
        return
    if not quiet:
        print(f"report: {page.path} ({page.bytes / 1e6:.1f} MB, {page.seconds:.1f} s)",
              file=sys.stderr)


def update_lock(recipe: Recipe, previous: dict[str, dict[str, object]], plan: Plan,
                outcomes: dict[str, Outcome]) -> None:
    """Record what this build produced; keep entries of stages it did not touch.

    A stage this build tried but could not build (failed, or skipped after a failure) loses
    its entry: the old one describes outputs made from other inputs than the entries around
    it (an upstream stage rebuilt, a file edited), and the lock must never mix two states.
    """
    stages = {sid: entry for sid, entry in previous.items() if sid in plan.all_stage_ids}
    for stage_id, outcome in outcomes.items():
        if outcome.ok and outcome.record and outcome.key:
            node = plan.stages[stage_id].node
            stages[stage_id] = lock_entry(outcome.key, outcome.record["outputs"],
                                          node.measurements,
                                          lock_notes(node.kind, outcome.metrics))
        elif not outcome.ok:
            stages.pop(stage_id, None)
    write_lock(recipe.lock_path, recipe.name, stages)


def lock_mismatches(lock: dict[str, dict[str, object]], plan: Plan,
                    outcomes: dict[str, Outcome]) -> list[str]:
    problems = []
    for stage_id, outcome in sorted(outcomes.items()):
        if not (outcome.ok and outcome.record):
            continue
        entry = lock.get(stage_id)
        if entry is None:
            problems.append(f"{stage_id}: not in the lock file")
            continue
        produced = lock_entry(outcome.key or "", outcome.record["outputs"],
                              plan.stages[stage_id].node.measurements)["outputs"]
        if produced != entry.get("outputs"):
            differing = sorted(n for n in set(produced) | set(entry.get("outputs") or {})
                               if produced.get(n) != (entry.get("outputs") or {}).get(n))
            problems.append(f"{stage_id}: output differs from the lock: {', '.join(differing)}")
    return problems


def print_failures(outcomes: dict[str, Outcome], mismatches: list[str]) -> None:
    for outcome in outcomes.values():
        if outcome.status == Status.FAILED:
            kind = "check failed" if outcome.check_failed else "failed"
            print(f"error: {outcome.stage_id} {kind}: {outcome.error}", file=sys.stderr)
            if outcome.log_path:
                print(f"       log: {outcome.log_path}", file=sys.stderr)
    for line in mismatches:
        print(f"error: --check: {line}", file=sys.stderr)


def write_summary(path: Path, recipe: Recipe, plan: Plan, outcomes: dict[str, Outcome],
                  wall: float) -> None:
    """`--summary FILE.md`: the release table as Markdown (for $GITHUB_STEP_SUMMARY)."""
    from buildsys.release_summary import build_summary_markdown

    release = next((s for s in plan.order if plan.stages[s].node.kind == "release"), None)
    index_file = None
    if release is not None and outcomes.get(release) and outcomes[release].ok:
        index_file = recipe.release_dir / "index.json"
    text = build_summary_markdown(recipe.name, index_file, summary_line(outcomes, wall))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelbuildError(f"cannot write the summary {path}: {exc.strerror or exc}") \
            from exc
