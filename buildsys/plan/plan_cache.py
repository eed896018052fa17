"""The instant no-op: answer "nothing to do" without loading the recipe or planning.

A full no-op parses the recipe, validates it (jsonschema), builds the graph (networkx),
hashes or stats every input and asks the store about every stage. When nothing it read has
changed since a build that ended with every stage up to date, its answer is known: ninja's
and Bazel's way, a stamp written at the end of that build records what the plan depended on,
and the next run compares only stat fingerprints and a few small digests:

- the recipe's bytes, the Python interpreter, the options that change the plan, the
  MODELBUILD_* environment, the CPU class (it enters some keys) and the host;
- (size, mtime_ns, ctime_ns, inode) of every file the plan read: recipe, dataset files,
  weights, model sources, the Python modules `plan/sources.py` parsed — as fingerprinted
  when the plan hashed them, so an edit during the build is never stamped as seen;
- the directories whose listing the plan relied on (model packages, the recipe's directory)
  and what each dataset glob matched;
- modelbuild's own code (its version, and every stage kind's version, live there) and the
  directories of sys.path (installing or upgrading a toolchain changes its version);
- the store's generation token (a new one whenever a record is written or removed, or the
  index is replaced: `cache gc`, another build), the blob behind every output and every
  output the build placed in build/ and release/, the lock file and the report page.

Anything missing, unreadable or different — and any option the fast path does not handle
(--check, --force, --report, a remote cache, …) — falls back to the full plan: the stamp can
only ever skip work that the full plan would also have skipped. Nothing here imports
networkx, jsonschema, yaml or the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FORMAT = 1
# Set to 1 to be told on stderr why a run was not answered from the stamp.
EXPLAIN_ENV = "MODELBUILD_EXPLAIN_NOOP"
STAMP_DIR = "plan-cache"  # under the store's root
ENV_PREFIX = "MODELBUILD_"
# Set by the runner for its workers, not a user's choice.
_IGNORED_ENV = {"MODELBUILD_COORDINATOR_PID", "MODELBUILD_THREADS", EXPLAIN_ENV,
                "MODELBUILD_ZYGOTE", "MODELBUILD_PLAN_CACHE"}
_PACKAGE = Path(__file__).resolve().parents[1]  # buildsys/


def _stat(path: str, *, with_ctime: bool = True) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if with_ctime:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _dir_stat(path: str) -> list[int] | None:
    """A directory's listing changes its mtime (a file added, removed or renamed in it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ino]


def _code_files() -> list[str]:
    """modelbuild's own modules and data: a change to any may change a plan."""
    found = []
    for directory, subdirs, files in os.walk(_PACKAGE):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        found.extend(os.path.join(directory, f) for f in sorted(files)
                     if f.endswith((".py", ".json")))
    return found


def _path_dirs(project_dir: str) -> list[str]:
    """sys.path's directories (site-packages: an install changes its listing), without the
    recipe's directory, which the planner may have put there itself."""
    return sorted({p for p in sys.path if p and p != project_dir and os.path.isdir(p)})


def _cpu_class() -> str:
    from buildsys.numerics import host_kernel_class

    return host_kernel_class()


def _glob_matches(pattern: str, root: str) -> list[str]:
    from buildsys.recipe.dataset_files import _glob

    return [str(p) for p in _glob(pattern, Path(root))]


def default_store_root(project_root: Path, cache_dir: str | None) -> Path:
    """Where the store is (kept in step with `store.store.default_cache_dir`, which a no-op
    must not import: it brings the index's database library)."""
    chosen = cache_dir or os.environ.get(f"{ENV_PREFIX}CACHE_DIR")
    return Path(chosen).expanduser().resolve() if chosen else project_root / ".cache"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):
        return None


class PlanCache:
    """One build's view of its stamp: `answer()` before anything is loaded, `save()` after
    a build that left every stage up to date."""

    def __init__(self, recipe: Path, options: Mapping[str, Any]) -> None:
        from buildsys.project import find_project_root

        self.recipe = Path(recipe).resolve()
        self.project_dir = str(self.recipe.parent)
        self.store_root = default_store_root(find_project_root(self.recipe.parent),
                                             options.get("cache_dir"))
        self.recipe_stat = _stat(str(self.recipe))
        try:
            self.recipe_digest = hashlib.sha256(self.recipe.read_bytes()).hexdigest()
        except OSError:
            self.recipe_digest = None
        self.context = {
            "format": FORMAT, "recipe": str(self.recipe), "recipe_sha256": self.recipe_digest,
            "options": dict(sorted(options.items())),
            "python": [sys.executable, sys.version], "host": platform.node(),
            # A digest, not the values: the stamp is a file in the store, and a variable may
            # hold something private.
            "env_sha256": hashlib.sha256(json.dumps(
                {k: v for k, v in sorted(os.environ.items())
                 if k.startswith(ENV_PREFIX) and k not in _IGNORED_ENV}).encode()).hexdigest(),
        }
        name = hashlib.sha256(json.dumps([str(self.recipe), self.context["options"]],
                                         sort_keys=True).encode()).hexdigest()[:32]
        self.path = self.store_root / STAMP_DIR / f"{name}.json"
        self.miss: str | None = None
        self._stamp: dict[str, Any] = {}

    # --- the fast path ------------------------------------------------------------------
    def answer(self) -> dict[str, Any] | None:
        """The stamp's report (what to print) if nothing the plan read has changed, else
        None (`self.miss` says why). Cheapest checks first; any doubt is None."""
        self.miss = self._mismatch()
        return None if self.miss else self._stamp["report"]

    def _mismatch(self) -> str | None:
        """What differs from the stamp, or None when nothing does."""
        if self.recipe_digest is None or self.recipe_stat is None:
            return "the recipe cannot be read"
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return "no stamp"
        except ValueError:
            return "the stamp is damaged"
        seal, _, body = text.partition("\n")
        if seal != hashlib.sha256(body.encode()).hexdigest():  # torn, truncated, edited
            return "the stamp is damaged"
        try:
            stamp = json.loads(body)
            if not isinstance(stamp, dict) or not isinstance(stamp["report"], dict):
                return "the stamp is damaged"
            if stamp["context"] != self.context:
                return "the recipe, an option or the environment changed"
            if stamp["recipe_stat"] != self.recipe_stat:
                return "the recipe file was touched"
            for path, fingerprint in stamp["files"].items():
                if _stat(path) != fingerprint:
                    return f"{path} changed"
            for path, fingerprint in stamp["outputs"].items():
                if _stat(path, with_ctime=False) != fingerprint:
                    return f"output {path} changed"
            for path, fingerprint in stamp["dirs"].items():
                if _dir_stat(path) != fingerprint:
                    return f"folder {path} changed"
            generation_path, token = stamp["store_generation"]
            if _read(generation_path) != token:
                return "the store's records changed"
            if stamp["code"] != [[p, _stat(p)] for p in _code_files()]:
                return "modelbuild's code changed"
            if stamp["path_dirs"] != [[p, _dir_stat(p)] for p in _path_dirs(self.project_dir)]:
                return "a folder on sys.path changed (a package installed or removed?)"
            if stamp["cpu_class"] != _cpu_class():
                return "the CPU class changed"
            for pattern, root, matched in stamp["globs"]:
                if _glob_matches(pattern, root) != matched:
                    return f"the files matching {pattern} changed"
        except (KeyError, TypeError, ValueError, AttributeError):
            return "the stamp is damaged"  # a stamp of another shape: not trusted
        self._stamp = stamp
        return None

    # --- after a build ------------------------------------------------------------------
    def save(self, *, files: Mapping[str, list[int] | None], outputs: Iterable[Path],
             dirs: Iterable[str], globs: Iterable[tuple[str, str]],
             store_generation: tuple[Path, str], report: dict[str, Any]) -> bool:
        """Write the stamp (atomically) after a build that left everything up to date.
        `files`: every file the plan read → the fingerprint it had when it was read (None:
        not known, so no stamp); `outputs`: what the build placed (and the blobs behind it);
        `store_generation`: the index's token file and the token the build ended with.
        Returns whether a stamp was written."""
        self.discard()
        if self.recipe_digest is None or self.recipe_stat is None \
                or any(fp is None for fp in files.values()):
            return False
        output_fps = {str(p): _stat(str(p), with_ctime=False) for p in outputs}
        dir_fps = {d: _dir_stat(d) for d in sorted(set(dirs))}
        if any(fp is None for fp in [*output_fps.values(), *dir_fps.values()]):
            return False
        stamp = {
            "context": self.context, "recipe_stat": self.recipe_stat,
            "files": dict(sorted(files.items())), "outputs": output_fps, "dirs": dir_fps,
            "store_generation": [str(store_generation[0]), store_generation[1]],
            "code": [[p, _stat(p)] for p in _code_files()],
            "path_dirs": [[p, _dir_stat(p)] for p in _path_dirs(self.project_dir)],
            "cpu_class": _cpu_class(),
            "globs": [[pattern, root, _glob_matches(pattern, root)]
                      for pattern, root in sorted(set(globs))],
            "report": report,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            body = json.dumps(stamp)
            tmp.write_text(f"{hashlib.sha256(body.encode()).hexdigest()}\n{body}",
                           encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # a stamp is an optimisation: without one the next run plans fully
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def discard(self) -> None:
        """Forget the stamp (before a build that may change what it describes)."""
        with contextlib.suppress(OSError):
            self.path.unlink()


def save_after_build(cache: PlanCache, recipe: Any, plan: Any, store: Any,
                     outcomes: Mapping[str, Any], *, devices: str = "",
                     extra_outputs: Iterable[Path] = ()) -> bool:
    """Stamp a build whose every stage ended up to date (built or cached), so the next run
    with nothing changed is answered without planning. A build with a failed or skipped
    stage, or anything the stamp cannot describe, gets no stamp; a stamp that cannot be
    made never fails the build (the next run plans fully). `devices`: what the build printed
    about devices (the no-op prints it again); `extra_outputs`: files the build wrote besides
    the stages' outputs whose absence the full path would repair (the report page)."""
    try:
        return _save_after_build(cache, recipe, plan, store, outcomes, devices,
                                 list(extra_outputs))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        import warnings

        warnings.warn(f"no plan-cache stamp ({type(exc).__name__}: {exc}); the next run "
                      f"plans fully", stacklevel=2)
        cache.discard()
        return False


def _save_after_build(cache: PlanCache, recipe: Any, plan: Any, store: Any,
                      outcomes: Mapping[str, Any], devices: str,
                      extra_outputs: list[Path]) -> bool:
    from buildsys.plan.node import FileRef
    from buildsys.plan.status import OUTCOMES, Status

    if not outcomes or any(o.status not in (Status.BUILT, Status.CACHED) or not o.record
                           for o in outcomes.values()):
        cache.discard()
        return False
    seen = store.stats.snapshot_fingerprints
    files: dict[str, list[int] | None] = {}
    dirs = {str(recipe.project_dir)}
    outputs: list[Path] = [recipe.lock_path]
    token = store.index.generation()
    if token is None:  # another process changed records during this build
        cache.discard()
        return False
    generation = (store.index.generation_path, token)
    for stage_id in plan.order:
        node = plan.stages[stage_id].node
        for name, ref in node.inputs.items():
            if isinstance(ref, FileRef):
                resolved = str(ref.path.resolve())
                files[resolved] = seen.get(resolved)
                if name.startswith("code/"):  # a module found on sys.path: its folder too
                    dirs.add(os.path.dirname(resolved))
        for name, output in outcomes[stage_id].record["outputs"].items():
            outputs.append(store.blobs.path_of(output["digest"]))  # gone: the stage re-runs
            outputs.append(recipe.build_dir / stage_id / name)
            if node.publish:
                outputs.append(recipe.release_dir / name)
    outputs.extend(extra_outputs)
    globs = [(str(spec["images"]), str(recipe.project_dir))
             for spec in recipe.section("datasets").values()
             if isinstance(spec, dict) and "images" in spec]
    counts = ", ".join(f"{len(outcomes) if s == Status.CACHED else 0} {s}" for s in OUTCOMES)
    report = {"summary": counts, "devices": devices}
    return cache.save(files=files, outputs=outputs, dirs=dirs, globs=globs,
                      store_generation=generation, report=report)


def cli_options(patterns: list[str], groups: list[str], offline: bool,
                cache_dir: str | None) -> dict[str, Any]:
    """The options that change what a plan is: part of the stamp's identity."""
    return {"patterns": list(patterns), "groups": sorted(set(groups)), "offline": offline,
            "cache_dir": cache_dir}
