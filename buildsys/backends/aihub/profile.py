"""An inference job's profile, summarised the way Qualcomm's export scripts print it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from buildsys.errors import StageError


def summarize_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise a qai_hub profile dict the way Qualcomm's export scripts print it.

    ``profile`` is what ``InferenceJob.download_profile()`` returns: ``execution_summary`` holds
    times in microseconds and memory in bytes; ``execution_detail`` lists layers with a
    ``compute_unit`` of NPU / GPU / CPU. Peak memory is ``inference_memory_peak_range``
    (qai_hub_models/utils/printing.py), falling back to ``estimated_inference_peak_memory``.
    """
    summary = profile.get("execution_summary") or {}
    detail = profile.get("execution_detail") or []
    time_us = summary.get("estimated_inference_time")
    if time_us is None:
        raise StageError("the AI Hub profile has no estimated_inference_time")
    peak = summary.get("inference_memory_peak_range")
    if peak is None and summary.get("estimated_inference_peak_memory") is not None:
        peak = (summary["estimated_inference_peak_memory"],) * 2
    units = Counter(str(layer.get("compute_unit", "UNK")) for layer in detail)
    compute_units = {unit: units.pop(unit, 0) for unit in ("NPU", "GPU", "CPU")}
    compute_units.update(sorted(units.items()))

    def ms(key: str) -> float | None:
        value = summary.get(key)
        return None if value is None else round(value / 1000.0, 3)

    return {
        "estimated_inference_time_ms": round(time_us / 1000.0, 3),
        "peak_memory_range_mb": None if peak is None else [round(p / 1e6) for p in peak],
        "peak_memory_range_bytes": None if peak is None else [int(p) for p in peak],
        "compute_unit_ops": compute_units,
        "total_ops": sum(compute_units.values()),
        "first_load_time_ms": ms("first_load_time"),
        "warm_load_time_ms": ms("warm_load_time"),
    }
