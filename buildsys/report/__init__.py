"""The HTML report beside the release index: figures, charts, segmentation overlays and the
build timeline on one self-contained page (no network, opens from disk).

Everything is read from what a build left behind — the store's records and blobs, the release
index, the build's JSON report — never by running a stage. This module stays cheap to import
(a no-op build imports it to decide whether there is anything to render); matplotlib, numpy,
Pillow and Jinja2 are imported by `page.render_page` only.
"""

from __future__ import annotations

from pathlib import Path

from buildsys.recipe.load import Recipe

PAGE_NAME = "report.html"
RELEASE_STAGE = "release/index"
# The JSON report of the last build that ran something: the page's timeline comes from it when
# the page is rendered later by `modelbuild report`.
LAST_BUILD_NAME = "last-build.json"


def release_dir(recipe: Recipe) -> Path:
    """Where the release stage publishes index.json and README.md (the page goes beside)."""
    return recipe.release_dir


def page_path(recipe: Recipe) -> Path:
    return release_dir(recipe) / PAGE_NAME


def last_build_path(recipe: Recipe) -> Path:
    return recipe.build_dir / LAST_BUILD_NAME
