"""The figures the page shows per variant, taken from the release index's rows as they are
(the page and the index must never disagree), plus the Pareto front the charts mark."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

# Task metrics a validation may report, best evidence first: against labels (when the dataset
# has them), then agreement with the fp32 model's own predictions.
TASK_METRICS = (
    ("miou", "mIoU"),
    ("pixel_accuracy", "pixel accuracy"),
    ("top1", "top-1 accuracy"),
    ("top1_accuracy", "top-1 accuracy"),
    ("argmax_agreement", "argmax agreement with fp32"),
    ("top1_agreement", "top-1 agreement with fp32"),
)


@dataclass(frozen=True)
class TaskMetric:
    key: str  # as in the validation figures, e.g. argmax_agreement
    label: str
    output: str
    value: float  # a fraction in [0, 1]


@dataclass
class VariantFigures:
    id: str
    model: str
    quantization: str
    target: str
    device: str
    model_bytes: int | None
    size_ratio_vs_float: float | None  # float's size / this size ("× smaller than float")
    latency_ms: float | None  # median
    latency_range_ms: tuple[float, float] | None  # min, max over the runs
    latency_runs: int | None
    latency_where: str | None  # the release index's own words
    measured_on: str  # host CPU | HTP simulator | device (AI Hub) | unknown
    psnr_db: dict[str, float]
    task_metric: TaskMetric | None
    archive: str | None
    peak_memory_mb: float | None = None
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    # Run on a real device through AI Hub (not packaged, so not in the release index): the
    # device, runtime, job link, peak memory range, ops per compute unit.
    aihub: dict[str, Any] | None = None

    @property
    def short(self) -> str:
        """What a chart labels a point with (the model is the chart's or the legend's)."""
        return f"{self.quantization} · {self.target}"

    @property
    def lowest_psnr_db(self) -> float | None:
        return min(self.psnr_db.values()) if self.psnr_db else None


def where_measured(where: str | None) -> str:
    """A short, honest name for where a latency was measured: simulator timings are the wall
    time of an x86 simulation, never phone latency."""
    text = (where or "").lower()
    if "simulator" in text:
        return "HTP simulator"
    if "ai hub" in text or "device" in text.split("(")[0]:
        return "device (AI Hub)"
    if "host" in text:
        return "host CPU"
    return "unknown"


def variant_figures(row: dict[str, Any]) -> VariantFigures:
    latency = row.get("latency_ms")
    median = latency.get("median") if isinstance(latency, dict) else latency
    spread = latency if isinstance(latency, dict) else {}
    low, high = spread.get("min"), spread.get("max")
    return VariantFigures(
        id=row["id"], model=row["model"], quantization=row["quantization"],
        target=row["target"], device=row["device"],
        model_bytes=int(row["model_bytes"]) if row.get("model_bytes") is not None else None,
        size_ratio_vs_float=row.get("size_ratio_vs_float"),
        latency_ms=float(median) if isinstance(median, int | float) else None,
        latency_range_ms=(float(low), float(high)) if isinstance(low, int | float)
        and isinstance(high, int | float) else None,
        latency_runs=spread.get("runs") if isinstance(spread.get("runs"), int) else None,
        latency_where=row.get("latency_where"),
        measured_on=where_measured(row.get("latency_where")),
        psnr_db={k: float(v) for k, v in (row.get("psnr_db") or {}).items()
                 if isinstance(v, int | float)},
        task_metric=task_metric(row.get("validation") or {}),
        archive=row.get("archive"),
        peak_memory_mb=row.get("peak_memory_mb"),
        sensitivity=sensitivity(row.get("sensitivity")),
        aihub=row.get("aihub"),
    )


def task_metric(validation: dict[str, Any]) -> TaskMetric | None:
    for key, label in TASK_METRICS:
        for output, figures in validation.items():
            value = figures.get(key) if isinstance(figures, dict) else None
            if isinstance(value, int | float):
                return TaskMetric(key, label, output, float(value))
    return None


def sensitivity(data: Any) -> list[tuple[str, float]]:
    """Per-layer sensitivity, worst first, from whatever shape the quantization-budget stage
    writes into the index: a list of {layer|name|tensor, sqnr_db|sqnr|value} (or wrapped in
    {"layers": [...]}) or a mapping layer → SQNR in dB. Anything else: no data."""
    if isinstance(data, dict) and isinstance(data.get("layers"), list):
        data = data["layers"]
    pairs: list[tuple[str, float]] = []
    if isinstance(data, dict):
        pairs = [(str(k), float(v)) for k, v in data.items() if isinstance(v, int | float)]
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            name = next((item[k] for k in ("layer", "name", "tensor") if k in item), None)
            value = next((item[k] for k in ("sqnr_db", "sqnr", "value") if k in item), None)
            if name is not None and isinstance(value, int | float):
                pairs.append((str(name), float(value)))
    return sorted(pairs, key=lambda p: p[1])  # lowest SQNR = most sensitive first


T = TypeVar("T")


def pareto_front(points: Sequence[T], cost: Callable[[T], float],
                 quality: Callable[[T], float]) -> list[T]:
    """The points no other point beats on both axes (lower cost, higher quality), by cost."""
    ranked = sorted(points, key=lambda p: (cost(p), -quality(p)))
    front: list[T] = []
    for point in ranked:
        if not front or quality(point) > quality(front[-1]):
            front.append(point)
    return front


def accuracy_of(variant: VariantFigures) -> tuple[str, float] | None:
    """(axis label, value) for the accuracy axis: the task metric in %, else the lowest PSNR."""
    if variant.task_metric is not None:
        return f"{variant.task_metric.label} (%)", 100 * variant.task_metric.value
    if variant.lowest_psnr_db is not None:
        return "PSNR against fp32 (dB)", variant.lowest_psnr_db
    return None
