"""The page's charts, drawn with matplotlib as inline SVG.

Why matplotlib SVG and not plotly: the page must open from disk or a CI artifact with no
network, so plotly would inline its 4.5 MB JavaScript bundle into every page (every CI run's
artifact) for hover and zoom that a handful of labelled points do not need. Static SVG is a
few tens of kB per chart, needs no JavaScript (nothing to fail in the browser), stays sharp
when zoomed or printed, and its text is searchable. Every point is labelled and the exact
figures are in the table beside the charts.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buildsys.report.figures import VariantFigures, accuracy_of, pareto_front
from buildsys.report.timeline import BUILT, FAILED, StageRun, Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUANT_COLOURS = {"float": "#4c72b0", "w8a8": "#dd8452", "w8a16": "#55a868", "w4a16": "#c44e52",
                 "w4a8": "#8172b3"}
OTHER_COLOURS = ("#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
TARGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
FRONT_COLOUR = "#222222"
RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9,
      "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
      "axes.grid": True, "grid.alpha": 0.3, "svg.image_inline": True}


@dataclass(frozen=True)
class Chart:
    """One inline SVG with a name (unique in the page) and a caption."""

    name: str
    title: str
    svg: str
    caption: str = ""


@contextmanager
def _figure(width: float, height: float, name: str) -> Iterator[Figure]:
    import matplotlib
    from matplotlib.figure import Figure

    # Per-chart salt: the ids matplotlib derives for clip paths and markers differ between
    # charts, so several SVGs can share one HTML document.
    with matplotlib.rc_context({**RC, "svg.hashsalt": name}):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure, name: str, title: str) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # ids such as figure_1 or axes_1 repeat in every SVG matplotlib writes: prefix them.
    text = re.sub(r'id="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r'(url\(#|xlink:href="#|href="#)([^)"]+)', rf"\1{name}-\2", text)
    head_end = text.index(">")
    return (f'{text[:head_end]} class="chart-svg" role="img" '
            f'aria-label="{html.escape(title, quote=True)}"{text[head_end:]}')


def quant_colour(scheme: str, order: Sequence[str]) -> str:
    if scheme in QUANT_COLOURS:
        return QUANT_COLOURS[scheme]
    others = [s for s in order if s not in QUANT_COLOURS]
    return OTHER_COLOURS[others.index(scheme) % len(OTHER_COLOURS)] if scheme in others \
        else OTHER_COLOURS[0]


def _grid(count: int, columns: int = 3) -> tuple[int, int]:
    cols = max(1, min(columns, count))
    return (count + cols - 1) // cols, cols


def _axes_list(figure: Figure, count: int, columns: int = 3) -> list[Axes]:
    rows, cols = _grid(count, columns)
    axes = figure.subplots(rows, cols, squeeze=False)
    flat = [a for row in axes for a in row]
    for spare in flat[count:]:
        spare.set_visible(False)
    return flat[:count]


def _models(variants: Sequence[VariantFigures]) -> list[str]:
    return list(dict.fromkeys(v.model for v in variants))


def _legend_handles(variants: Sequence[VariantFigures], schemes: list[str],
                    targets: list[str]) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", color=quant_colour(s, schemes),
                      label=s) for s in dict.fromkeys(v.quantization for v in variants)]
    handles += [Line2D([], [], linestyle="", marker=TARGET_MARKERS[targets.index(t)
                                                                   % len(TARGET_MARKERS)],
                       color="#777777", label=t)
                for t in dict.fromkeys(v.target for v in variants)]
    handles.append(Line2D([], [], color=FRONT_COLOUR, linestyle="--", marker="o",
                          markerfacecolor="none", label="Pareto front"))
    return handles


def accuracy_chart(name: str, title: str, variants: Sequence[VariantFigures],
                   cost: str, cost_label: str, heading: str = "") -> Chart | None:
    """Accuracy against a cost (size or latency), one panel per model, the Pareto front of
    each model marked (no other variant is both cheaper and more accurate)."""
    points: list[tuple[VariantFigures, float, str, float]] = []  # variant, cost, axis, acc.
    for v in variants:
        accuracy, x = accuracy_of(v), _cost(v, cost)
        if accuracy is not None and x is not None:
            points.append((v, x, *accuracy))
    if not points:
        return None
    models = _models([p[0] for p in points])
    schemes = list(dict.fromkeys(v.quantization for v in variants))
    targets = list(dict.fromkeys(v.target for v in variants))
    rows, cols = _grid(len(models))
    with _figure(3.6 * cols + 1.4, 3.0 * rows + 0.3, name) as figure:
        for axes, model in zip(_axes_list(figure, len(models)), models, strict=True):
            mine = [p for p in points if p[0].model == model]
            front = pareto_front(mine, lambda p: p[1], lambda p: p[3])
            axes.plot([p[1] for p in front], [p[3] for p in front], linestyle="--",
                      color=FRONT_COLOUR, linewidth=1, zorder=1, drawstyle="steps-post")
            for point in mine:
                v, x, _, y = point
                on_front = point in front
                axes.scatter([x], [y], s=70 if on_front else 45, zorder=3,
                             marker=TARGET_MARKERS[targets.index(v.target) % 7],
                             color=quant_colour(v.quantization, schemes),
                             edgecolors=FRONT_COLOUR if on_front else "white",
                             linewidths=1.6 if on_front else 0.8)
                axes.annotate(v.short, (x, y), textcoords="offset points", xytext=(5, 4),
                              fontsize=7, color="#333333")
            axes.set_title(model)
            axes.set_xlabel(cost_label)
            axes.set_ylabel(mine[0][2])
            costs = [p[1] for p in mine]
            if min(costs) > 0 and max(costs) / min(costs) > 20:
                axes.set_xscale("log")
            axes.margins(x=0.25, y=0.2)
            low, high = axes.get_ylim()
            if mine[0][2].endswith("(%)") and high > 100:  # no room above 100 %
                axes.set_ylim(low, 100 + 0.04 * (high - low))
        if heading:
            figure.suptitle(heading, fontsize=10, x=0.02, ha="left")
        handles = _legend_handles([p[0] for p in points], schemes, targets)
        figure.legend(handles=handles, loc="outside right")
        return Chart(name, title, _svg(figure, name, title))


def _cost(variant: VariantFigures, cost: str) -> float | None:
    if cost == "size":
        return variant.model_bytes / 1e6 if variant.model_bytes else None
    return variant.latency_ms


def device_groups(variants: Sequence[VariantFigures]) -> list[tuple[str, str,
                                                                    list[VariantFigures]]]:
    """(device, where measured, its variants with a latency), in index order."""
    groups: dict[tuple[str, str], list[VariantFigures]] = {}
    for v in variants:
        if v.latency_ms is not None:
            groups.setdefault((v.device, v.measured_on), []).append(v)
    return [(device, where, vs) for (device, where), vs in groups.items()]


def latency_label(device: str, where: str) -> str:
    if where == "HTP simulator":
        return f"{device}: HTP simulator on x86 (wall time of a simulation, not device latency)"
    if where == "device (AI Hub)":
        return f"{device}: measured on the real device (AI Hub)"
    return f"{device}: {where}"


def latency_bars(name: str, variants: Sequence[VariantFigures]) -> Chart | None:
    """Median latency per variant, one panel per device (never one shared axis: a simulator's
    wall time and a CPU's latency are not comparable)."""
    groups = device_groups(variants)
    if not groups:
        return None
    schemes = list(dict.fromkeys(v.quantization for v in variants))
    height = sum(0.45 + 0.28 * len(vs) for _, _, vs in groups) + 0.4
    title = "Latency per device"
    with _figure(8.5, height, name) as figure:
        ratios = [len(vs) + 1.5 for _, _, vs in groups]
        all_axes = figure.subplots(len(groups), 1, squeeze=False,
                                   gridspec_kw={"height_ratios": ratios})
        for (device, where, vs), row in zip(groups, all_axes, strict=True):
            axes = row[0]
            labels = [f"{v.model} · {v.short}" for v in vs]
            values = [v.latency_ms or 0.0 for v in vs]
            bars = axes.barh(labels, values, color=[quant_colour(v.quantization, schemes)
                                                    for v in vs])
            axes.bar_label(bars, labels=[_ms(x) for x in values], padding=3, fontsize=7)
            axes.invert_yaxis()
            axes.set_title(latency_label(device, where), loc="left")
            axes.set_xlabel("median latency (ms)")
            axes.margins(x=0.15)
            axes.grid(axis="y", visible=False)
        return Chart(name, title, _svg(figure, name, title))


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def sensitivity_chart(name: str, variants: Sequence[VariantFigures],
                      layers: int = 15) -> Chart | None:
    """The most sensitive layers of each quantized variant (lowest SQNR against fp32)."""
    having = [v for v in variants if v.sensitivity][:6]
    if not having:
        return None
    title = "Per-layer sensitivity"
    rows, cols = _grid(len(having), 2)
    shown = max(min(layers, len(v.sensitivity)) for v in having)
    with _figure(5.2 * cols, (0.9 + 0.2 * shown) * rows, name) as figure:
        for axes, v in zip(_axes_list(figure, len(having), 2), having, strict=True):
            worst = v.sensitivity[:layers]
            axes.barh([n[-40:] for n, _ in worst], [s for _, s in worst], color="#c44e52")
            axes.invert_yaxis()
            axes.set_title(v.id, loc="left")
            axes.set_xlabel("SQNR against fp32 (dB), lowest = most sensitive")
            axes.tick_params(axis="y", labelsize=7)
            axes.grid(axis="y", visible=False)
        return Chart(name, title, _svg(figure, name, title))


KIND_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
                "#8c8c8c", "#ccb974", "#64b5cd", "#1b9e77", "#d95f02")


def timeline_chart(name: str, timeline: Timeline) -> Chart | None:
    """A Gantt chart of the stages that ran, one lane per worker, coloured by stage kind."""
    runs = [r for r in timeline.runs if r.origin in (BUILT, FAILED) and r.started_s is not None]
    if not runs:
        return None
    lane_of = _lanes(runs)
    lanes = sorted(set(lane_of.values()), key=_lane_order)
    kinds = list(dict.fromkeys(r.kind for r in sorted(runs, key=lambda r: r.started_s or 0)))
    colour = {k: KIND_COLOURS[i % len(KIND_COLOURS)] for i, k in enumerate(kinds)}
    title = "Build timeline"
    end = max((r.started_s or 0) + r.duration_s for r in runs)
    width_in = 10.0
    height_in = max(0.9 + 0.42 * len(lanes), 0.4 + 0.15 * len(kinds))  # room for the legend
    with _figure(width_in, height_in, name) as figure:
        axes = figure.subplots()
        for r in runs:
            lane = lanes.index(lane_of[r.id])
            start = r.started_s or 0.0
            axes.broken_barh([(start, max(r.duration_s, end / 800))], (lane - 0.38, 0.76),
                             facecolors=colour[r.kind],
                             edgecolors="#b22222" if r.origin == FAILED else "white",
                             linewidth=1.5 if r.origin == FAILED else 0.4)
            # the end of the id (variant and kind) in bars wide enough for a few characters
            fits = int(r.duration_s / end * width_in * 72 * 0.8 / 3.8)
            if fits >= 8:
                label = r.id if len(r.id) <= fits else "…" + r.id[-(fits - 1):]
                axes.text(start + r.duration_s / 2, lane, label, ha="center", va="center",
                          fontsize=6.5, color="white", clip_on=True)
        axes.set_yticks(range(len(lanes)), lanes)
        axes.set_ylim(len(lanes) - 0.5, -0.5)
        axes.set_xlim(0, end * 1.01)
        axes.set_xlabel("seconds since execution started")
        axes.grid(axis="y", visible=False)
        from matplotlib.patches import Patch

        axes.legend(handles=[Patch(color=colour[k], label=k) for k in kinds],
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        return Chart(name, title, _svg(figure, name, title))


def _lanes(runs: Sequence[StageRun]) -> dict[str, str]:
    """Stage id → lane: its worker slot; stages that overlapped on one worker name (remote
    jobs waiting side by side) get lanes of their own, "remote", "remote #2", …"""
    lane_of: dict[str, str] = {}
    free_at: dict[str, list[float]] = {}  # worker → when each of its lanes is free again
    for r in sorted(runs, key=lambda r: r.started_s or 0.0):
        worker = r.worker or "?"
        start = r.started_s or 0.0
        ends = free_at.setdefault(worker, [])
        index = next((i for i, e in enumerate(ends) if e <= start + 1e-3), len(ends))
        if index == len(ends):
            ends.append(0.0)
        ends[index] = start + r.duration_s
        lane_of[r.id] = worker if index == 0 else f"{worker} #{index + 1}"
    return lane_of


def _lane_order(lane: str) -> tuple[int, str, int]:
    worker, _, sub = lane.partition(" #")
    prefix, _, number = worker.rpartition("-")
    rank = int(number) if number.isdigit() else 1 << 30
    return rank, prefix or worker, int(sub or 1)
