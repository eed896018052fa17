"""What the page shows, read from the store: the release index, each variant's validation
inputs and predictions (for segmentation overlays), and the timeline of the last build.

Records are found by each stage's last key; blobs are fetched through the store's interface
(verified against their digests). A variant's predictions are used only when they are the
ones its row in the release index was made from (the digests chain up to the index's record),
so the page never mixes two builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.recipe.load import Recipe
from buildsys.report import RELEASE_STAGE, last_build_path
from buildsys.report.figures import VariantFigures, variant_figures
from buildsys.report.timeline import Timeline, from_build_report, from_records
from buildsys.store.store import Store


@dataclass
class SegmentationInputs:
    """One model's validation images and the per-pixel predictions to overlay on them."""

    model: str
    input_name: str
    output_name: str
    preprocess: dict[str, Any]
    samples: list[dict[str, Any]]  # the validation inputs, as the model saw them
    reference: list[dict[str, Any]]  # fp32 outputs (what validation compares against)
    variants: dict[str, list[dict[str, Any]]]  # variant id → its outputs, index order
    missing: list[str] = field(default_factory=list)  # variants whose outputs are not usable


@dataclass
class ReportData:
    recipe: str
    index: dict[str, Any]
    variants: list[VariantFigures]
    timeline: Timeline | None
    segmentation: list[SegmentationInputs]
    tasks: dict[str, str]  # model → task


class StoreReader:
    """Read records and blobs of one store; blobs are placed in a private scratch directory
    (hardlinks) and removed again by `close`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._scratch: Path | None = None
        self._placed: list[str] = []

    def record(self, stage_id: str) -> dict[str, Any] | None:
        key = self.store.index.get_last_key(stage_id)
        return self.store.get_record(key) if key else None

    def blob(self, digest: str, name: str) -> Path:
        if self._scratch is None:
            self._scratch = self.store.new_scratch("report")
        dest = self._scratch / digest[:16] / name
        if not dest.exists():
            if not self.store.blob_ok(digest):
                raise ModelbuildError(f"{name} ({digest[:12]}…) is missing or damaged in the "
                                      f"store {self.store.root}; build the recipe again")
            # blob_ok re-hashes a blob whose stat fingerprint changed: no second hash here
            self.store.get_blob(digest, dest, verify=False)
            self._placed.append(digest)
        return dest

    def close(self) -> None:
        if self._scratch is not None:
            self.store.remove_links(self._scratch, self._placed)
            self._scratch = None


def gather(recipe: Recipe, store: Store, build_report: dict[str, Any] | None) -> ReportData:
    reader = StoreReader(store)
    try:
        release = reader.record(RELEASE_STAGE)
        if release is None or "index.json" not in release.get("outputs", {}):
            raise ModelbuildError(f"no release index of recipe {recipe.name!r} in the store "
                                  f"{store.root}: build it first (modelbuild {recipe.path})")
        index_path = reader.blob(release["outputs"]["index.json"]["digest"], "index.json")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        variants = [variant_figures(row) for row in index.get("variants", [])]
        variants += _aihub_variants(recipe, reader)
        tasks = {name: spec.get("task", "other")
                 for name, spec in recipe.section("models").items()}
        segmentation = [_segmentation(recipe, reader, release, model, variants)
                        for model in dict.fromkeys(v.model for v in variants)
                        if tasks.get(model) == "segmentation"]
        timeline = _timeline(recipe, reader, build_report)
        return ReportData(recipe=recipe.name, index=index, variants=variants,
                          timeline=timeline, tasks=tasks,
                          segmentation=[s for s in segmentation if s is not None])
    finally:
        reader.close()


def _segmentation(recipe: Recipe, reader: StoreReader, release: dict[str, Any], model: str,
                  variants: list[VariantFigures]) -> SegmentationInputs | None:
    from buildsys.data.datasets import load_samples_npz

    spec = recipe.section("models")[model]
    reference_record = reader.record(f"{model}/reference")
    if reference_record is None:
        return None
    samples_digest = reference_record["ingredients"]["inputs"].get("samples")
    reference_digest = reference_record["outputs"]["reference.npz"]["digest"]
    if samples_digest is None:
        return None
    dataset = (recipe.section("validate") or {}).get("dataset") or ""
    preprocess = (recipe.section("datasets").get(dataset) or {}).get("preprocess") or {}
    outputs = list(spec.get("outputs") or ["output_0"])
    inputs = list(spec["inputs"])
    found = SegmentationInputs(
        model=model, input_name=inputs[0], output_name=outputs[0], preprocess=preprocess,
        samples=load_samples_npz(reader.blob(samples_digest, "samples.npz")),
        reference=load_samples_npz(reader.blob(reference_digest, "reference.npz")),
        variants={})
    released = (release.get("ingredients") or {}).get("inputs") or {}
    for variant in variants:
        if variant.model != model:
            continue
        digest = _released_outputs(reader, variant.id, released, reference_digest)
        if digest is None:
            found.missing.append(variant.id)
            continue
        found.variants[variant.id] = load_samples_npz(reader.blob(digest, "outputs.npz"))
    return found


def _aihub_variants(recipe: Recipe, reader: StoreReader) -> list[VariantFigures]:
    """Variants run on real devices through AI Hub: not packaged, so not in the release
    index, but their on-device latency and outputs are what the page is for. Rows shaped
    like the index's, from the inference and validation records."""
    rows = []
    devices = recipe.section("devices")
    for v in recipe.variants:
        if devices[v.device]["backend"] != "aihub":
            continue
        infer = reader.record(f"{v.id}/infer")
        validate = reader.record(f"{v.id}/validate")
        if infer is None:
            continue
        m = infer.get("metrics") or {}
        row: dict[str, Any] = {
            "id": v.id, "model": v.model, "quantization": v.quantization, "target": v.target,
            "device": v.device, "model_bytes": _compiled_bytes(reader, v.id),
            "latency_ms": {"median": m.get("estimated_inference_time_ms")},
            "latency_where": m.get("where") or f"{m.get('device', v.device)} (AI Hub)",
            "aihub": {k: m[k] for k in ("device", "runtime", "url", "peak_memory_range_mb",
                                        "compute_unit_ops") if k in m}}
        outputs = ((validate or {}).get("metrics") or {}).get("outputs") or {}
        row["psnr_db"] = {n: o["psnr_db"] for n, o in outputs.items() if "psnr_db" in o}
        row["validation"] = outputs
        rows.append(variant_figures(row))
    return rows


def _compiled_bytes(reader: StoreReader, variant_id: str) -> int | None:
    """The size of what AI Hub compiled (and linked) for the device, job files aside."""
    model, quantization, target, device = variant_id.split("/")
    for kind in ("link", "compile"):
        record = reader.record(f"{model}/{quantization}/{target}@{device}/{kind}")
        if record is not None:
            sizes = [o["size"] for n, o in record["outputs"].items() if n != "job.json"]
            return sum(sizes) if sizes else None
    return None


def _released_outputs(reader: StoreReader, variant_id: str, released: dict[str, str],
                      reference_digest: str) -> str | None:
    """The digest of the predictions this variant's row was validated on, or None when the
    store no longer holds the records that chain them to the release index."""
    validate = reader.record(f"{variant_id}/validate")
    if validate is None:
        return None
    produced = validate["outputs"].get("validation.json", {}).get("digest")
    if released.get(f"{variant_id}/validate") not in (None, produced):
        return None  # validated again since the index was made: another build's predictions
    inputs = validate["ingredients"]["inputs"]
    if inputs.get("reference") != reference_digest:
        return None
    return inputs.get("outputs")


def _timeline(recipe: Recipe, reader: StoreReader,
              build_report: dict[str, Any] | None) -> Timeline | None:
    if build_report is None:
        path = last_build_path(recipe)
        try:
            build_report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            build_report = None
    if build_report is not None and build_report.get("stages"):
        return from_build_report(build_report)
    from buildsys.plan.graph import build_graph

    records = {sid: rec for sid in build_graph(recipe).nodes
               if (rec := reader.record(sid)) is not None}
    return from_records(recipe.name, records) if records else None
