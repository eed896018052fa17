"""The report page of a real tiny build: the figures of the release index, overlays computed
from the store's predictions, the timeline, and when the page is (not) rendered."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.build import open_store
from buildsys.data.datasets import load_samples_npz
from buildsys.recipe.load import load_recipe
from buildsys.report.charts import _lanes, sensitivity_chart, timeline_chart
from buildsys.report.figures import pareto_front, variant_figures
from buildsys.report.overlays import CITYSCAPES, palette
from buildsys.report.page import write_page
from buildsys.report.timeline import from_build_report
from tests.conftest import REPO
from tests.report.conftest import TinyRelease

pytestmark = pytest.mark.slow


class PageParser(HTMLParser):
    """The variant table's cells (data-field/data-value), overlay pairs and chart figures."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.cell_text: dict[str, dict[str, str]] = {}
        self.disagreements: list[tuple[int, str]] = []  # (image index, caption text)
        self.charts: list[str] = []
        self.external: list[str] = []
        self._row: str | None = None
        self._field: str | None = None
        self._image: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-variant"):
            self._row = a["data-variant"]
            self.rows[self._row] = {}
            self.cell_text[self._row] = {}
        if tag == "td" and self._row and a.get("data-field"):
            self._field = a["data-field"]
            self.rows[self._row][self._field] = a.get("data-value") or ""
            self.cell_text[self._row][self._field] = ""
        if tag == "div" and a.get("data-image") is not None:
            self._image = int(a["data-image"] or 0)
        if tag == "div" and a.get("data-disagreement") is not None and self._image is not None:
            self.disagreements.append((self._image, a["data-disagreement"] or ""))
        if tag == "figure" and a.get("data-chart"):
            self.charts.append(a["data-chart"] or "")
        for name in ("src", "href"):
            value = a.get(name) or ""
            if tag in ("img", "script", "link", "iframe") and re.match(r"[a-z]+://",
                                                                             value):
                self.external.append(f"<{tag} {name}={value}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row and self._field:
            self.cell_text[self._row][self._field] += data


def parse(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_build_writes_the_page_beside_the_release_index(tiny_release: TinyRelease) -> None:
    assert tiny_release.page.is_file()
    assert f"report: {tiny_release.page}" in tiny_release.report["process"].stderr
    size = tiny_release.page.stat().st_size
    assert 50_000 < size < 10_000_000
    text = tiny_release.page.read_text()
    assert not re.search(r"<(script|link|iframe)\b", text), "the page must need nothing else"
    assert parse(tiny_release.page).external == []


def test_page_lists_every_variant_with_the_release_index_figures(
        tiny_release: TinyRelease) -> None:
    page = parse(tiny_release.page)
    index = {row["id"]: row for row in tiny_release.index["variants"]}
    assert list(page.rows) == list(index)  # every variant, in the index's order
    for variant_id, row in index.items():
        cells, text = page.rows[variant_id], page.cell_text[variant_id]
        assert int(cells["model_bytes"]) == row["model_bytes"]
        assert float(cells["size_ratio_vs_float"]) == row["size_ratio_vs_float"]
        assert f"{row['size_ratio_vs_float']:.2f}×" in text["size_ratio_vs_float"]
        assert float(cells["latency_ms"]) == row["latency_ms"]["median"]
        assert cells["latency_where"] == row["latency_where"]
        assert json.loads(cells["psnr_db"]) == row["psnr_db"]
        assert f"{row['psnr_db']['logits']:.1f} dB" in text["psnr_db"]
        agreement = row["validation"]["logits"]["argmax_agreement"]
        assert float(cells["task_metric"]) == agreement
        assert f"{100 * agreement:.2f} %" in text["task_metric"]
        where = "HTP simulator" if "sm8550" in variant_id else "host CPU"
        assert text["latency_where"].startswith(where)
        assert "phone" not in text["latency_where"]


def test_charts_are_inline_svg_for_each_device(tiny_release: TinyRelease) -> None:
    page = parse(tiny_release.page)
    assert page.charts == ["accuracy-size", "accuracy-latency-host",
                           "accuracy-latency-sm8550-sim", "latency-devices", "timeline"]
    text = tiny_release.page.read_text()
    assert text.count("<svg") == len(page.charts)
    assert "This release index carries no per-layer sensitivity data." in text
    ids = re.findall(r'\sid="([^"]+)"', text)
    assert len(ids) == len(set(ids)), "SVG ids must be unique in one document"
    assert "not device latency" in text


def test_overlays_show_where_each_variant_disagrees_with_fp32(
        tiny_release: TinyRelease) -> None:
    """The page's disagreement per image equals one computed here from the stage outputs
    the build materialised, and over the images it is 1 - the validation's agreement."""
    page = parse(tiny_release.page)
    build = tiny_release.project.root / "build" / "tiny"
    reference = load_samples_npz(build / "tiny" / "reference" / "reference.npz")
    index = {row["id"]: row for row in tiny_release.index["variants"]}
    images = len(reference)
    assert images == 2
    assert len(page.disagreements) == images * len(index)
    for position, variant_id in enumerate(index):
        outputs = load_samples_npz(build / variant_id / "infer" / "outputs.npz")
        fractions = []
        for image in range(images):
            expected = np.mean(np.argmax(reference[image]["logits"], axis=1)
                               != np.argmax(outputs[image]["logits"], axis=1))
            shown_image, shown = page.disagreements[image * len(index) + position]
            assert shown_image == image
            assert float(shown) == pytest.approx(expected, abs=1e-9)
            fractions.append(float(shown))
        agreement = index[variant_id]["validation"]["logits"]["argmax_agreement"]
        # The validation rounds agreement to 1e-4 (what it can mean, the same on every CPU).
        assert 1 - np.mean(fractions) == pytest.approx(agreement, abs=5e-5)
    assert "4 classes, tab10 palette" in tiny_release.page.read_text()


def test_timeline_has_every_stage_with_start_and_worker(tiny_release: TinyRelease) -> None:
    stages = tiny_release.report["stages"]
    assert all(s["status"] == "built" for s in stages)
    assert all(s["started_s"] >= 0 and s["worker"].startswith("local-") for s in stages)
    text = tiny_release.page.read_text()
    assert f"<b>{len(stages)}</b><span>stages built</span>" in text
    assert "<b>0 %</b><span>cache hit ratio</span>" in text
    slowest = max(stages, key=lambda s: s["duration_s"])
    table = text[text.index('id="slowest"'):]
    assert table.index(slowest["id"]) < table.index("</tr>", table.index("<tbody>"))


def test_no_op_build_keeps_the_page_and_imports_no_plotting(
        tiny_release: TinyRelease) -> None:
    before = tiny_release.page.stat().st_mtime_ns
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "buildsys", "recipe.yaml"],
        cwd=tiny_release.project.root, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {"matplotlib", "jinja2", "PIL", "buildsys.report.page"} & imported
    assert "report:" not in result.stderr
    assert tiny_release.page.stat().st_mtime_ns == before

    tiny_release.page.unlink()  # e.g. dist/ cleaned: the next build, even a no-op, writes it
    again = tiny_release.project.run("recipe.yaml")
    assert f"report: {tiny_release.page}" in again.stderr
    assert parse(tiny_release.page).rows.keys() == {r["id"] for r in
                                                    tiny_release.index["variants"]}
    # its timeline is still the last build that ran something, not the no-op
    built = len(tiny_release.report["stages"])
    assert f"<b>{built}</b><span>stages built</span>" in tiny_release.page.read_text()


def test_report_command_renders_again_from_the_store(tiny_release: TinyRelease,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "again.html"
    result = tiny_release.project.run("report", "recipe.yaml", "-o", str(out),
                                      "--build-report", "report.json")
    assert f"wrote {out} (" in result.stdout and "5 charts" in result.stdout
    again, first = parse(out), parse(tiny_release.page)
    assert again.rows == first.rows and again.disagreements == first.disagreements
    text = out.read_text()
    assert f"build started {tiny_release.report['started_at']}" in text
    assert "local-1" in text

    # Without the kept build report: durations from the store's records, no start times.
    kept = tiny_release.project.root / "build" / "tiny" / "last-build.json"
    aside = kept.with_suffix(".aside")
    kept.rename(aside)
    recipe = load_recipe(tiny_release.project.root / "recipe.yaml")
    store = open_store(recipe, None)
    try:
        write_page(recipe, store, path=out)
    finally:
        store.close()
        aside.rename(kept)
    text = out.read_text()
    assert "No report of the last build was kept" in text
    assert 'data-chart="timeline"' not in text  # no start times: no Gantt chart
    slowest = max(tiny_release.report["stages"], key=lambda s: s["duration_s"])["id"]
    assert text.index(slowest, text.index('id="slowest"')) < text.index("</tbody>",
                                                                         text.index('id="slowest"'))
    assert parse(out).rows == first.rows


def test_report_of_a_recipe_never_built_says_so(tiny_release: TinyRelease,
                                                tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text((REPO / "recipes" / "tiny.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "buildsys", "report", "recipe.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "no release index of recipe 'tiny'" in result.stderr
    assert "build it first" in result.stderr
    assert not (tmp_path / "release" / "tiny" / "report.html").exists()


def test_a_page_that_cannot_be_written_is_a_warning_not_a_failed_build(
        tiny_release: TinyRelease, capsys: pytest.CaptureFixture[str]) -> None:
    from buildsys.build import release_page
    from buildsys.execute.runner import Outcome

    root = tiny_release.project.root
    # the same project and store, the release published elsewhere, where a directory sits
    # in the page's place
    (root / "other.yaml").write_text((root / "recipe.yaml").read_text()
                                     + "settings: {dist_dir: dist-other}\n")
    (root / "dist-other" / "report.html").mkdir(parents=True)
    recipe = load_recipe(root / "other.yaml")
    store = open_store(recipe, None)
    try:
        release_page(recipe, store, tiny_release.report,
                     {"release/index": Outcome("release/index", "built", "new")}, quiet=False)
    finally:
        store.close()
    err = capsys.readouterr().err
    assert "warning: no report page (cannot write the report page" in err, err
    assert f"modelbuild report {recipe.path}` tries again" in err
    assert [p.name for p in (root / "dist-other").iterdir()] == ["report.html"]  # no temp


# --- pieces that need no build -------------------------------------------------------------

def _row(**overrides: Any) -> dict[str, Any]:
    row = {"id": "m/w8a8/onnx/host", "model": "m", "quantization": "w8a8", "target": "onnx",
           "device": "host", "model_bytes": 1000}
    return {**row, **overrides}


def test_pareto_front_keeps_only_variants_nothing_beats() -> None:
    points = [(1, 90), (2, 95), (3, 94), (4, 99), (2, 80), (5, 99)]
    front = pareto_front(points, lambda p: p[0], lambda p: p[1])
    assert front == [(1, 90), (2, 95), (4, 99)]


def test_sensitivity_chart_draws_the_worst_layers_first() -> None:
    layers = [{"layer": f"conv{i}", "sqnr_db": 40.0 - i} for i in range(30)]
    variant = variant_figures(_row(sensitivity=layers))
    assert variant.sensitivity[0] == ("conv29", 11.0)
    chart = sensitivity_chart("sensitivity", [variant])
    assert chart is not None and chart.svg.startswith("<svg")
    assert "conv29" in chart.svg and "conv14" not in chart.svg  # 15 worst only
    assert sensitivity_chart("sensitivity", [variant_figures(_row())]) is None


def test_palettes() -> None:
    name, colours = palette(19)
    assert name == "Cityscapes" and colours == list(CITYSCAPES)
    assert colours[0] == ("road", (128, 64, 128))
    assert palette(4)[0] == "tab10" and len({c for _, c in palette(4)[1]}) == 4
    assert palette(50)[0] == "turbo" and len(palette(50)[1]) == 50


def test_timeline_puts_overlapping_remote_jobs_on_lanes_of_their_own() -> None:
    def stage(sid: str, start: float, took: float, worker: str) -> dict[str, Any]:
        return {"id": sid, "status": "built", "reason": "new", "started_s": start,
                "duration_s": took, "worker": worker}

    timeline = from_build_report({"recipe": "r", "stages": [
        stage("m/export", 0.0, 5.0, "local-1"),
        stage("m/w8a8/tflite@s23/compile", 5.0, 60.0, "remote"),
        stage("m/w8a8/qnn@s23/compile", 5.5, 50.0, "remote"),
        stage("m/w8a8/qnn/s23/infer", 56.0, 30.0, "remote"),  # after the qnn compile ended
        stage("m/w8a8/onnx/compile", 5.0, 2.0, "local-2"),
        {"id": "m/capture", "status": "cached", "reason": "up to date", "duration_s": 0.0,
         "built_in_s": 12.5}]})
    lanes = _lanes([r for r in timeline.runs if r.origin == "built"])
    assert lanes == {"m/export": "local-1", "m/w8a8/onnx/compile": "local-2",
                     "m/w8a8/tflite@s23/compile": "remote",
                     "m/w8a8/qnn@s23/compile": "remote #2", "m/w8a8/qnn/s23/infer": "remote #2"}
    assert timeline.hit_ratio == 1 / 6 and timeline.saved_s == 12.5
    chart = timeline_chart("timeline", timeline)
    assert chart is not None
    ticks = re.findall(r">(local-\d|remote(?: #2)?)<", chart.svg)
    assert ticks == ["local-1", "local-2", "remote", "remote #2"]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_overlay_input_undoes_the_datasets_preprocessing(tmp_path: Path, layout: str) -> None:
    """What the page shows as the validation image is the photo, not the normalised tensor
    the model saw: the dataset's own loader makes the tensor, the page inverts it."""
    from PIL import Image

    from buildsys.data.datasets import load_samples
    from buildsys.report.overlays import _photo

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[::-1]).save(tmp_path / "b.png")
    preprocess = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                  "layout": layout}
    shape = [1, 3, 32, 48] if layout == "NCHW" else [1, 32, 48, 3]
    samples = load_samples({"images": "*.png", "preprocess": preprocess, "validation": 1},
                           tmp_path, {"image": {"shape": shape, "dtype": "float32"}},
                           "validation")
    shown = _photo(samples[0]["image"], preprocess)
    assert shown.shape == (32, 48, 3) and shown.dtype == np.uint8
    assert np.abs(shown.astype(int) - pixels[::-1].astype(int)).max() <= 1


def test_task_metric_prefers_labels_over_agreement_and_latency_where_is_named() -> None:
    agreement = variant_figures(_row(validation={"logits": {"psnr_db": 30.0,
                                                            "top1_agreement": 0.9}}))
    assert agreement.task_metric is not None
    assert (agreement.task_metric.key, agreement.task_metric.value) == ("top1_agreement", 0.9)
    labelled = variant_figures(_row(validation={"logits": {"argmax_agreement": 0.99,
                                                           "miou": 0.61}}))
    assert labelled.task_metric is not None and labelled.task_metric.label == "mIoU"
    assert variant_figures(_row(validation={"out": {"psnr_db": 30.0}})).task_metric is None
    wheres = {"host CPU (onnxruntime 1.32.0, 1 thread)": "host CPU",
              "QNN HTP simulator on x86 (not device latency), sm8550": "HTP simulator",
              "Samsung Galaxy S23 (AI Hub)": "device (AI Hub)", None: "unknown"}
    for where, expected in wheres.items():
        assert variant_figures(_row(latency_where=where)).measured_on == expected
