"""Planning for accuracy: dataset labels as stage inputs, and `quantization: auto` (a ladder of
ordinary quantize + score stages, a sensitivity stage, and one selection stage)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.plan.node import FileRef, InputRef, OutputRef
from buildsys.plan.sources import code_inputs

if TYPE_CHECKING:
    from buildsys.plan.pipeline import PipelineBuilder


def label_inputs(spec: dict[str, Any], project: Path) -> tuple[dict[str, Any],
                                                               dict[str, InputRef]]:
    """A dataset's labels as parameters without paths (the files enter by digest)."""
    from buildsys.recipe.dataset_files import label_files

    labels = dict(spec["labels"])
    inputs: dict[str, InputRef] = {}
    for index, path in enumerate(label_files(spec, project)):
        inputs[f"labels/{index:05d}/{path.name}"] = FileRef(path)
    for key in ("masks", "file"):
        if key in labels:
            labels[key] = True
    if "python" in labels:
        inputs.update(code_inputs(str(labels["python"]), project))
    return labels, inputs


def validation_labels(builder: PipelineBuilder, samples_id: str, params: dict[str, Any]
                      ) -> dict[str, InputRef]:
    """The labels of a validation split as a stage input (adding how to read them to
    `params`), or nothing when the dataset has none."""
    node = builder.nodes[samples_id]
    if "labels.npz" not in node.outputs:
        return {}
    labels = node.params["spec"]["labels"]
    params["labels"] = {k: labels[k] for k in ("classes", "ignore_index") if k in labels}
    return {"labels": OutputRef(samples_id, "labels.npz")}


# --- quantization: auto -------------------------------------------------------------------
DEFAULT_PROMOTE = (1, 2, 4, 8)
# Validation samples the sensitivity analysis runs (one run per quantizer per sample).
SENSITIVITY_SAMPLES = 1
RUNG_KINDS = ("minmax", "entropy", "percentile", "per-channel", "promote", "w8a16", "fp16")


def ladder(scheme: dict[str, Any]) -> list[dict[str, Any]]:
    """The rungs of an `auto` scheme, cheapest first: each an ordinary onnxruntime scheme
    (plus `promote_top`: the k most sensitive layers at 16-bit activations), or fp16.
    `rungs:` may leave kinds out (e.g. the histogram calibrations on a large model)."""
    kinds = set(scheme.get("rungs") or RUNG_KINDS)
    # Spelt like a recipe's own scheme (calibration data enters as an input), so a rung
    # and an identical scheme of the recipe share one stage key: built once.
    w8a8 = {"engine": "onnxruntime", "weights": "int8", "activations": "int8"}
    if scheme.get("samples"):
        w8a8["samples"] = scheme["samples"]
    # The plain w8a8 rung always runs: the sensitivity report is made from it.
    rungs = [("w8a8-minmax", {**w8a8, "method": "minmax"})]
    for method in ("entropy", "percentile"):
        if method in kinds:
            rungs.append((f"w8a8-{method}", {**w8a8, "method": method}))
    if "per-channel" in kinds:
        rungs.append(("w8a8-per-channel", {**w8a8, "method": "minmax", "per_channel": True}))
    if "promote" in kinds:
        for k in scheme.get("promote") or DEFAULT_PROMOTE:
            rungs.append((f"w8a8-top{k}-a16", {**w8a8, "method": "minmax", "promote_top": k}))
    if "w8a16" in kinds:
        rungs.append(("w8a16", {**w8a8, "activations": "int16", "method": "minmax"}))
    if "fp16" in kinds:
        rungs.append(("fp16", {"engine": "float"}))
    return [{"name": name, "scheme": rung, "index": index,
             "weight_bits": 16 if rung["engine"] == "float" else 8}
            for index, (name, rung) in enumerate(rungs)]


def evaluation_inputs(builder: PipelineBuilder, model: str, params: dict[str, Any]
                      ) -> dict[str, InputRef]:
    """What scoring a model on the validation split reads: samples, fp32 reference, labels."""
    dataset = builder.validation_dataset()
    reference = builder.reference(model)
    if dataset is None or reference is None:  # the recipe check reports this first
        raise ValueError("quantization: auto needs validate: dataset")
    samples = builder.dataset(dataset, "validation", model, None)
    params.update({"task": builder.model(model).get("task", "other"),
                   "outputs": builder.io_spec(model)["outputs"]})
    return {"samples": builder.output(samples), "reference": builder.output(reference),
            **validation_labels(builder, samples, params)}


def auto_quantized(builder: PipelineBuilder, model: str, scheme_name: str) -> OutputRef:
    """Every rung quantized and scored on the host (ordinary cached stages), one sensitivity
    report on the plain w8a8 rung (the promotion rungs read it), and one selection stage whose
    output is the winning model. The graph is the same whatever the scores: only the
    selection's verdict depends on them, and only the selection reads the budget."""
    scheme = builder.recipe.section("quantization")[scheme_name]
    labels = {"model": model, "quantization": scheme_name}
    eval_params: dict[str, Any] = {}
    eval_inputs = evaluation_inputs(builder, model, eval_params)
    calibration = builder.output(builder.dataset(scheme["calibration"], "calibration", model,
                                                 scheme.get("samples")))
    rungs = ladder(scheme)
    select_inputs: dict[str, InputRef] = {}
    sensitivity: str | None = None
    for rung in rungs:
        prefix = f"{model}/{scheme_name}/rungs/{rung['name']}"
        rung_labels = {**labels, "rung": rung["name"]}
        if rung["scheme"]["engine"] == "float":
            model_ref = builder.float_onnx(model)
        else:
            inputs: dict[str, InputRef] = {"calibration": calibration,
                                           "model": builder.float_onnx(model)}
            if rung["scheme"].get("promote_top"):
                inputs["sensitivity"] = builder.output(sensitivity or "")
            model_ref = builder.output(builder.add(
                f"{prefix}/quantize", "quantize",
                {"scheme": rung["scheme"], "io": builder.io_spec(model)}, inputs, rung_labels))
            if sensitivity is None:  # the first rung: plain w8a8 minmax
                sensitivity = builder.add(
                    f"{model}/{scheme_name}/sensitivity", "sensitivity",
                    {"samples": SENSITIVITY_SAMPLES},
                    {"model": model_ref, "samples": eval_inputs["samples"]}, labels)
        score = builder.add(f"{prefix}/score", "score",
                            {**eval_params, "fp16": rung["scheme"]["engine"] == "float"},
                            {"model": model_ref, **eval_inputs}, rung_labels)
        select_inputs[f"rung/{rung['name']}/score"] = builder.output(score)
        select_inputs[f"rung/{rung['name']}/model"] = model_ref
    params = {"budget": dict(scheme["budget"]), "objective": scheme.get("objective", "size"),
              "rungs": [{k: r[k] for k in ("name", "index", "weight_bits", "scheme")}
                        for r in rungs]}
    return builder.output(builder.add(select_stage_id(model, scheme_name), "select_quantization",
                                      params, select_inputs, labels))


def sensitivity_of(builder: PipelineBuilder, model: str, scheme_name: str,
                   quantized: OutputRef) -> str | None:
    """A sensitivity report for a scheme that asks for one (`sensitivity: true`)."""
    scheme = builder.recipe.section("quantization").get(scheme_name) or {}
    if not scheme.get("sensitivity") or scheme.get("engine") == "auto":
        return None
    eval_inputs = evaluation_inputs(builder, model, {})
    return builder.add(f"{model}/{scheme_name}/sensitivity", "sensitivity",
                       {"samples": SENSITIVITY_SAMPLES},
                       {"model": quantized, "samples": eval_inputs["samples"]},
                       {"model": model, "quantization": scheme_name})


def compile_precision(builder: PipelineBuilder, scheme_name: str) -> str:
    """float, quant, or auto (the compile looks at the model: an `auto` winner may be float,
    and a mixed scheme's float layers need HTP's fp16 mode)."""
    if scheme_name == "float":
        return "float"
    scheme = builder.recipe.section("quantization")[scheme_name]
    if scheme["engine"] == "auto" or (scheme.get("mixed") or {}).get("float"):
        return "auto"
    return "quant"


def select_stage_id(model: str, scheme_name: str) -> str:
    return f"{model}/{scheme_name}/select"


def selection_input(builder: PipelineBuilder, model: str, scheme_name: str
                    ) -> dict[str, InputRef]:
    """`auto`'s choice and table, for a package manifest (nothing for other schemes)."""
    stage_id = select_stage_id(model, scheme_name)
    if stage_id not in builder.nodes:
        return {}
    return {"selection": OutputRef(stage_id, "selection.json")}


def release_entry(builder: PipelineBuilder, model: str, scheme_name: str,
                  entry: dict[str, Any], inputs: dict[str, InputRef]) -> None:
    """The quantization choice and the sensitivity report of a variant, for the index."""
    for kind, stage_id, name in (
            ("selection", select_stage_id(model, scheme_name), "selection.json"),
            ("sensitivity", f"{model}/{scheme_name}/sensitivity", "sensitivity.json")):
        if stage_id in builder.nodes:
            inputs[f"{entry['id']}/{kind}"] = OutputRef(stage_id, name)
            entry[kind] = f"{stage_id}/{name}"
