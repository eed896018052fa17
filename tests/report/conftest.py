"""One cold build of recipes/tiny.yaml for every report test (session-scoped: ≈ 1 min), and
one headless Chromium for the browser tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Project


@dataclass
class TinyRelease:
    project: Project
    report: dict[str, Any]  # the build's JSON report

    @property
    def dist(self) -> Path:
        return self.project.root / "release" / "tiny"

    @property
    def page(self) -> Path:
        return self.dist / "report.html"

    @property
    def index(self) -> dict[str, Any]:
        return json.loads((self.dist / "index.json").read_text())


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> TinyRelease:
    root = tmp_path_factory.mktemp("report-tiny")
    shutil.copy(REPO / "recipes" / "tiny.yaml", root / "recipe.yaml")
    project = Project(root)
    report = project.build()
    assert report["ok"], report["process"].stderr
    return TinyRelease(project, report)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (no browser download: the system binary).
    Flags: no background networking, no first-run or component updates (see .ci/run)."""
    browser_path = shutil.which("chromium")
    if browser_path is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()
