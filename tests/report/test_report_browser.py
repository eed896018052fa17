"""The tiny build's report page in a real headless Chromium, opened from disk with the
network off: no console errors, nothing fetched, every chart and image drawn, a screenshot
that is not blank."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageStat

from tests.report.conftest import TinyRelease

pytestmark = pytest.mark.slow

# Per chart: its drawn size and how many shapes it holds; per image: whether it decoded.
MEASURE = """() => ({
  charts: [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {name: f.dataset.chart, width: box.width, height: box.height,
            shapes: svg ? svg.querySelectorAll('path, rect, use, text').length : 0};
  }),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                         width: i.naturalWidth, shown: i.width})),
  rows: document.querySelectorAll('#variant-table tbody tr').length,
})"""


def test_page_renders_offline_without_errors(tiny_release: TinyRelease, chromium: Any,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    context = chromium.new_context(offline=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        response = page.goto(tiny_release.page.as_uri(), wait_until="load")
        assert response is not None and response.ok
        measured = page.evaluate(MEASURE)
        shot = page.screenshot(full_page=True)
    finally:
        context.close()

    assert problems == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert measured["rows"] == len(tiny_release.index["variants"])
    assert len(measured["charts"]) == 5
    for chart in measured["charts"]:
        assert chart["width"] > 200 and chart["height"] > 100, chart
        assert chart["shapes"] > 20, chart
    assert len(measured["images"]) == 2 * (2 + 2 * len(tiny_release.index["variants"]))
    for image in measured["images"]:
        assert image["complete"] and image["width"] >= 192 and image["shown"] > 0, image

    path = tmp_path_factory.getbasetemp() / "report-tiny.png"
    path.write_bytes(shot)  # kept for a human to look at
    screenshot = Image.open(io.BytesIO(shot)).convert("L")
    assert screenshot.height > 2000
    stats = ImageStat.Stat(screenshot)
    assert stats.stddev[0] > 20, f"screenshot looks blank: {path}"
    colours = Image.open(path).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000  # photos, class maps and charts
