"""Render the report page: gather what the store holds, draw the charts and overlays, fill the
template, write the file atomically beside the release index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.recipe.load import Recipe
from buildsys.report import page_path
from buildsys.report.figures import VariantFigures
from buildsys.store.store import Store


@dataclass(frozen=True)
class WrittenPage:
    path: Path
    bytes: int
    seconds: float
    charts: int


def write_page(recipe: Recipe, store: Store, build_report: dict[str, Any] | None = None,
               path: Path | None = None) -> WrittenPage:
    started = time.monotonic()
    html, charts = render_page(recipe, store, build_report)
    path = path or page_path(recipe)
    data = html.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelbuildError(f"cannot write the report page {path}: "
                              f"{exc.strerror or exc}") from exc
    return WrittenPage(path, len(data), time.monotonic() - started, charts)


def render_page(recipe: Recipe, store: Store,
                build_report: dict[str, Any] | None = None) -> tuple[str, int]:
    """The page's HTML and how many charts it holds."""
    from buildsys.report import charts as draw
    from buildsys.report.gather import gather
    from buildsys.report.overlays import model_overlays

    data = gather(recipe, store, build_report)
    variants = data.variants
    sections: list[tuple[str, str, list[draw.Chart], str]] = []  # anchor, title, charts, note
    size_chart = draw.accuracy_chart("accuracy-size", "Accuracy against size", variants,
                                     "size", "model size (MB)")
    sections.append(("accuracy-size", "Accuracy against size",
                     [size_chart] if size_chart else [], _accuracy_note(variants)))
    latency_charts = []
    for device, where, group in draw.device_groups(variants):
        chart = draw.accuracy_chart(f"accuracy-latency-{_slug(device)}",
                                    f"Accuracy against latency: {device}", group, "latency",
                                    "median latency (ms)", draw.latency_label(device, where))
        if chart:
            latency_charts.append(chart)
    sections.append(("accuracy-latency", "Accuracy against latency, per device",
                     latency_charts, "One chart per device: latencies measured in different "
                     "places are never put on one axis."))
    bars = draw.latency_bars("latency-devices", variants)
    sections.append(("latency", "Latency per device", [bars] if bars else [],
                     "Host CPU and HTP simulator figures are not phone latency; only AI Hub "
                     "rows were measured on a real device."))
    sensitivity = draw.sensitivity_chart("sensitivity", variants)
    sections.append(("sensitivity", "Per-layer sensitivity", [sensitivity] if sensitivity else [],
                     "" if sensitivity else "This release index carries no per-layer "
                     "sensitivity data."))
    labels = {v.id: f"{v.quantization} · {v.target} · {v.device}" for v in variants}
    overlays = [_overlays_or_problem(model_overlays, s, labels) for s in data.segmentation]
    timeline = data.timeline
    timeline_chart = draw.timeline_chart("timeline", timeline) if timeline else None
    all_charts = [c for _, _, cs, _ in sections for c in cs]
    if timeline_chart:
        all_charts.append(timeline_chart)
    html = _template().render(
        recipe=data.recipe, generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        variants=variants, sections=sections, overlays=overlays, timeline=timeline,
        timeline_chart=timeline_chart, fmt=Formats)
    return html, len(all_charts)


def _overlays_or_problem(draw: Any, inputs: Any, labels: dict[str, str]) -> Any:
    """One model's overlays; outputs the page cannot read as class maps (another layout,
    shapes that differ between variants) leave a note instead of failing the page."""
    from buildsys.report.overlays import ModelOverlays

    try:
        return draw(inputs, labels)
    except (ValueError, IndexError, KeyError) as exc:
        return ModelOverlays(inputs.model, 0, "", [], [], [], inputs.missing,
                             problem=f"its outputs could not be drawn as class maps ({exc})")


def _accuracy_note(variants: list[VariantFigures]) -> str:
    if not any(v.task_metric or v.psnr_db for v in variants):
        return "No variant was validated: there is no accuracy to plot."
    metrics = {v.task_metric.label for v in variants if v.task_metric}
    if any("fp32" in m for m in metrics):
        return ("Accuracy here is agreement with the fp32 model's own predictions on the "
                "validation images (no labels in the dataset): 100 % means no change, not a "
                "perfect model.")
    return "" if metrics else "No task metric: the accuracy axis is PSNR against fp32."


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("buildsys.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    return env.get_template("page.html.j2")


class Formats:
    """How the page writes figures; the table keeps the raw value beside each."""

    @staticmethod
    def size(n: int | None) -> str:
        if n is None:
            return "–"
        return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

    @staticmethod
    def ratio(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}×"

    @staticmethod
    def ms(x: float | None) -> str:
        if x is None:
            return "–"
        return f"{x:.3g} ms" if x < 100 else f"{x:,.0f} ms"

    @staticmethod
    def db(x: float | None) -> str:
        return "–" if x is None else f"{x:.1f} dB"

    @staticmethod
    def pct(x: float | None, digits: int = 2) -> str:
        return "–" if x is None else f"{100 * x:.{digits}f} %"

    @staticmethod
    def seconds(x: float | None) -> str:
        if x is None:
            return "–"
        if x < 60:
            return f"{x:.1f} s"
        return f"{int(x // 60)} min {x % 60:.0f} s"
