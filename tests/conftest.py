"""Shared helpers: write a project to a temp dir and run the real `modelbuild` CLI on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / ".cache"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(self, *args: str, check: bool | None = True, env: dict[str, str] | None = None,
            timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `python -m buildsys ARGS` in the project (or `cwd`); check=True expects exit 0.
        The caller's MODELBUILD_CACHE_DIR is dropped; `env` may set one."""
        full_env = {k: v for k, v in os.environ.items() if k != "MODELBUILD_CACHE_DIR"}
        full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        result = subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd or self.root,
                                capture_output=True, text=True, env=full_env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"modelbuild {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def build(self, recipe: str = "recipe.yaml", *args: str, check: bool | None = True,
              env: dict[str, str] | None = None) -> dict[str, Any]:
        """Build with a JSON report and return it (plus the process under 'process')."""
        report_path = self.root / "report.json"
        report_path.unlink(missing_ok=True)
        result = self.run(recipe, "--report", str(report_path), *args, check=check, env=env)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        report["process"] = result
        return report


def statuses(report: dict[str, Any], status: str) -> set[str]:
    return {s["id"] for s in report["stages"] if s["status"] == status}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SeaweedFS S3 server on 127.0.0.1, started once per session (tests/remote/conftest.py)."""
    from tests.remote.conftest import seaweed_session

    yield from seaweed_session(tmp_path_factory)


# Starts a command with SIGINT as a shell gives it to a foreground command: not ignored, not
# blocked (a test runner launched as a background job passes SIGINT on ignored, and a library
# an earlier test loaded in this process may have blocked it). A wrapper that resets it and
# execs, rather than a preexec_fn: forking a threaded test process to run Python in the child
# can deadlock. Use: [sys.executable, "-c", LIKE_A_TERMINAL, "-m", "buildsys", ...].
LIKE_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
