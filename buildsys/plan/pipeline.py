"""Model variants → stage nodes.

Per model: export (fp32 ONNX), optional optimize, reference outputs; per scheme: quantize; per
target (and chipset where the compiler needs one): compile; per device: infer, profile,
validate, package; one release index over every package. Shared work is one node: every
variant of a model reads the same export, every device with the same chipset the same compile.
"""

from __future__ import annotations

from typing import Any

from buildsys.plan import accuracy
from buildsys.plan.node import FileRef, InputRef, OutputRef, StageNode
from buildsys.plan.sources import code_inputs
from buildsys.recipe.load import Recipe
from buildsys.recipe.matrix import Variant
from buildsys.recipe.model_source import SOURCE_FILE_KEYS, input_name, is_torch
from buildsys.stages import stage_class

DEFAULT_PROFILE = {"host": {"warmup": 2, "runs": 10}}


class PipelineBuilder:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.nodes: dict[str, StageNode] = {}
        self.timeouts: dict[str, float] = recipe.settings["timeouts"]
        self.compiled: dict[Variant, str] = {}  # each variant's compile (or link) stage

    def add(self, stage_id: str, kind: str, params: dict[str, Any],
            inputs: dict[str, InputRef], labels: dict[str, str] | None = None,
            publish: bool = False) -> str:
        """One stage node; its kind's class says which files it writes (Stage.outputs)."""
        if stage_id not in self.nodes:
            cls = stage_class(kind)
            self.nodes[stage_id] = StageNode(
                stage_id, kind, params, inputs, outputs=cls.outputs(params),
                timeout=self.timeouts.get(kind), publish=publish, labels=labels or {},
                measurements=cls.measurement_files)
        return stage_id

    def output(self, stage_id: str, index: int = 0) -> OutputRef:
        """A reference to one of a planned stage's declared outputs (the first by default)."""
        return OutputRef(stage_id, self.nodes[stage_id].outputs[index])

    def all_outputs(self, stage_id: str, prefix: str) -> dict[str, InputRef]:
        """Every declared output of a planned stage, as inputs named `<prefix>/<file>`."""
        return {f"{prefix}/{n}": OutputRef(stage_id, n) for n in self.nodes[stage_id].outputs}

    # --- model sources -------------------------------------------------------------------
    def model(self, name: str) -> dict[str, Any]:
        return self.recipe.section("models")[name]

    def io_spec(self, name: str) -> dict[str, Any]:
        model = self.model(name)
        inputs = {k: {"shape": v["shape"], "dtype": v.get("dtype", "float32")}
                  for k, v in model["inputs"].items()}
        return {"inputs": inputs, "outputs": list(model.get("outputs") or ["output_0"])}

    def source(self, name: str) -> tuple[dict[str, Any], dict[str, InputRef]]:
        """Source parameters without paths (files enter as inputs, by digest)."""
        source = self.model(name)["source"]
        project = self.recipe.project_dir
        params: dict[str, Any] = {}
        inputs: dict[str, InputRef] = {}
        for key, value in source.items():
            if key in SOURCE_FILE_KEYS:
                if value:
                    inputs[input_name(key)] = FileRef(project / value)
                params[key] = bool(value)
            else:
                params[key] = value
        if "python" in source:
            inputs.update(code_inputs(source["python"], project))
        return params, inputs

    def is_torch(self, name: str) -> bool:
        return is_torch(self.model(name)["source"])

    # --- shared stages ---------------------------------------------------------------------
    def dataset(self, dataset: str, split: str, model: str, count: int | None) -> str:
        from buildsys.recipe.dataset_files import input_files

        spec = self.recipe.section("datasets")[dataset]
        project = self.recipe.project_dir
        inputs = {f"files/{i:05d}/{p.name}": FileRef(p)
                  for i, p in enumerate(input_files(spec, project))}
        params = {"spec": {k: v for k, v in spec.items() if k not in ("images", "npz", "npy")},
                  "split": split, "count": count, "io": self.io_spec(model)}
        if "python" in spec:
            inputs.update(code_inputs(spec["python"], project))
        if spec.get("labels") and split == "validation":
            params["spec"]["labels"], label_refs = accuracy.label_inputs(spec, project)
            inputs.update(label_refs)
        suffix = f"-{count}" if count is not None else ""
        return self.add(f"data/{dataset}/{split}{suffix}@{model}", "dataset", params, inputs)

    def export(self, model: str) -> str:
        params, inputs = self.source(model)
        params = {"source": params, "io": self.io_spec(model), "opset": self.opset(model)}
        return self.add(f"{model}/export", "export", params, inputs, {"model": model})

    def capture(self, model: str) -> str | None:
        """The captured torch program (.pt2), for torch sources only."""
        if not self.is_torch(model):
            return None
        params, inputs = self.source(model)
        params = {"source": params, "io": self.io_spec(model)}
        return self.add(f"{model}/capture", "capture", params, inputs, {"model": model})

    def opset(self, model: str) -> int:
        return int(self.model(model).get("opset") or self.recipe.settings["opset"])

    def float_onnx(self, model: str) -> OutputRef:
        """The fp32 ONNX every later stage starts from: optimized if the recipe asks."""
        optimize = self.model(model).get("optimize") or {}
        if not any(optimize.values()) or not self.is_torch(model):
            return self.output(self.export(model))
        params, inputs = self.source(model)
        params = {"source": params, "io": self.io_spec(model), "opset": self.opset(model),
                  "optimize": optimize}
        return self.output(self.add(f"{model}/optimize", "optimize", params, inputs,
                                    {"model": model}))

    def validation_dataset(self) -> str | None:
        return (self.recipe.section("validate") or {}).get("dataset")

    def reference(self, model: str) -> str | None:
        dataset = self.validation_dataset()
        if dataset is None:
            return None
        samples = self.dataset(dataset, "validation", model, None)
        if self.is_torch(model):
            params, inputs = self.source(model)
        else:
            params, inputs = {}, {"model": self.output(self.export(model))}
        inputs["samples"] = self.output(samples)
        params = {"source": params, "io": self.io_spec(model)}
        return self.add(f"{model}/reference", "reference", params, inputs, {"model": model})

    def quantized(self, model: str, scheme_name: str) -> OutputRef:
        if scheme_name == "float":
            return self.float_onnx(model)
        scheme = self.recipe.section("quantization")[scheme_name]
        if scheme["engine"] == "auto":
            return accuracy.auto_quantized(self, model, scheme_name)
        samples = self.dataset(scheme["calibration"], "calibration", model, scheme.get("samples"))
        inputs: dict[str, InputRef] = {"calibration": self.output(samples)}
        params: dict[str, Any] = {"scheme": {k: v for k, v in scheme.items()
                                             if k not in ("calibration", "validate")},
                                  "io": self.io_spec(model)}
        if scheme["engine"] == "aimet":
            source_params, source_inputs = self.source(model)
            inputs.update(source_inputs)
            params["source"] = source_params
            params["optimize"] = self.model(model).get("optimize") or {}
            if scheme.get("qat"):  # the training callable's source enters the key
                inputs.update(self.qat_inputs(scheme, model))
        else:
            inputs["model"] = self.float_onnx(model)
        kind = "aihub_quantize" if scheme["engine"] == "aihub" else "quantize"
        quantized = self.output(self.add(f"{model}/{scheme_name}/quantize", kind, params,
                                         inputs, {"model": model, "quantization": scheme_name}))
        accuracy.sensitivity_of(self, model, scheme_name, quantized)
        return quantized

    def qat_inputs(self, scheme: dict[str, Any], model: str) -> dict[str, InputRef]:
        """QAT: the train callable's module files, and the validation split of the scheme's
        dataset when it has one (the callable gets every split the dataset declares)."""
        project = self.recipe.project_dir
        inputs: dict[str, InputRef] = {**code_inputs(scheme["qat"]["train"], project)}
        if self.recipe.section("datasets")[scheme["calibration"]].get("validation"):
            inputs["qat/validation"] = self.output(
                self.dataset(scheme["calibration"], "validation", model, None))
        return inputs

    def compile(self, v: Variant) -> str:
        target = self.recipe.section("targets")[v.target]
        device = self.recipe.section("devices")[v.device]
        runtime = target["runtime"]
        labels = {"model": v.model, "quantization": v.quantization, "target": v.target}
        if device["backend"] == "aihub":
            return self.aihub_compile(v, target, device, labels)
        if runtime == "tensorrt":  # an engine for this machine's GPU, from the (QDQ) ONNX
            return self.add(v.compile_stage_id(shared_by=v.device), "tensorrt_compile",
                            {"io": self.io_spec(v.model)},
                            {"model": self.quantized(v.model, v.quantization)}, labels)
        params: dict[str, Any] = {"runtime": runtime, "io": self.io_spec(v.model),
                                  "precision": accuracy.compile_precision(self, v.quantization)}
        shared_by = None  # every host device runs the same compiled model
        if runtime in ("tflite", "ncnn", "executorch"):  # converted from the torch model
            source_params, inputs = self.source(v.model)
            params["source"] = source_params
            if runtime == "ncnn":
                params["storage"] = target.get("storage", "fp16")
            if runtime == "executorch" and v.quantization != "float":  # PT2E, in the compile
                scheme = self.recipe.section("quantization")[v.quantization]
                params["scheme"] = {key: value for key, value in scheme.items()
                                    if key not in ("calibration", "validate")}
                inputs["calibration"] = self.output(self.dataset(
                    scheme["calibration"], "calibration", v.model, scheme.get("samples")))
        else:
            inputs = {"model": self.quantized(v.model, v.quantization)}
        if runtime == "onnx":
            params["optimization"] = target.get("optimization", "extended")
            params["ort_format"] = bool(target.get("ort_format"))
        if runtime == "qnn_context_binary":
            params["chipset"] = device["chipset"]
            params["float"] = target.get("float", "fp16")
            shared_by = device["chipset"]
        return self.add(v.compile_stage_id(shared_by=shared_by), "compile", params, inputs,
                        labels)

    def aihub_compile(self, v: Variant, target: dict[str, Any], device: dict[str, Any],
                      labels: dict[str, str]) -> str:
        model_ref = self.quantized(v.model, v.quantization)
        link = bool(target.get("link"))  # compile to a DLC, then link it into a context binary
        params = {"runtime": "qnn_dlc" if link else target["runtime"],
                  "device": _aihub_device(device), "options": target.get("options", ""),
                  "io": self.io_spec(v.model)}
        compile_id = self.add(v.compile_stage_id(shared_by=v.device), "aihub_compile", params,
                              {"model": model_ref}, labels)
        if not link:
            return compile_id
        return self.add(v.compile_stage_id("link", shared_by=v.device), "aihub_link",
                        {"device": _aihub_device(device),
                         "options": target.get("link_options", "")},
                        {"compiled": self.output(compile_id)}, labels)

    # --- per device -------------------------------------------------------------------------
    def variant(self, v: Variant) -> str | None:
        self.capture(v.model)
        compile_id = self.compile(v)
        self.compiled[v] = compile_id
        device = self.recipe.section("devices")[v.device]
        target = self.recipe.section("targets")[v.target]
        labels = {"model": v.model, "quantization": v.quantization, "target": v.target,
                  "device": v.device}
        model_inputs = self.all_outputs(compile_id, "compiled")
        if device["backend"] == "aihub":
            model_inputs = {"compiled": self.output(compile_id)}  # the job.json
        run_params = {"runtime": target["runtime"], "backend": device["backend"],
                      "chipset": device.get("chipset"), "io": self.io_spec(v.model)}
        profile_id = None
        on_gpu = device["backend"] == "cuda"  # TensorRT's own stage kinds
        if device["backend"] in ("host", "cuda"):
            profile = {**DEFAULT_PROFILE["host"], **(device.get("profile") or {})}
            profile_id = self.add(v.stage_id("profile"),
                                  "tensorrt_profile" if on_gpu else "profile",
                                  {**run_params, **profile}, dict(model_inputs), labels)
        reference = self.reference(v.model)
        if reference is None:
            return profile_id
        samples = self.dataset(self.validation_dataset() or "", "validation", v.model, None)
        infer_kind = {"aihub": "aihub_infer", "cuda": "tensorrt_infer"}.get(device["backend"],
                                                                           "infer")
        if device["backend"] == "aihub":
            run_params["device"] = _aihub_device(device)
        infer_params = run_params
        if target["runtime"] == "tflite" and device["backend"] == "host":
            # XNNPACK's kernels round differently per CPU; LiteRT's reference kernels are the
            # same bytes on every CPU (validation is about numbers; profile measures speed).
            infer_params = {**run_params, "kernels": "reference"}
        infer_id = self.add(v.stage_id("infer"), infer_kind, infer_params,
                            {**model_inputs, "samples": self.output(samples)}, labels)
        validate_params = {"thresholds": v.thresholds(), "task": self.model(v.model).get(
            "task", "other"), "outputs": self.io_spec(v.model)["outputs"]}
        validate_inputs = {"reference": self.output(reference), "outputs": self.output(infer_id),
                           **accuracy.validation_labels(self, samples, validate_params)}
        validate_id = self.add(v.stage_id("validate"), "validate", validate_params,
                               validate_inputs, labels)
        if not v.package or device["backend"] == "aihub":
            return validate_id
        return self.package(v, compile_id, validate_id, labels)

    def package(self, v: Variant, compile_id: str, validate_id: str,
                labels: dict[str, str]) -> str:
        variant_spec = {
            "recipe": self.recipe.name,
            "model": {v.model: self.model(v.model)},
            "quantization": {v.quantization: self.recipe.section("quantization").get(
                v.quantization, {"engine": "none"})},
            "target": {v.target: self.recipe.section("targets")[v.target]},
            "device": {v.device: self.recipe.section("devices")[v.device]},
            "validate": v.thresholds(),
        }
        from buildsys.hashing import digest_value

        archive = f"{self.recipe.name}-{v.model}-{v.quantization}-{v.target}-{v.device}.tar.gz"
        source = self.model(v.model)["source"]
        untrained = "python" in source and not source.get("weights")
        params = {"variant": labels, "recipe_digest": digest_value(variant_spec),
                  "weights_note": "untrained: initialised from seed "
                                  f"{source.get('seed', 0)} (no weights file)" if untrained
                                  else "trained weights from the recipe's source",
                  "io": self.io_spec(v.model), "archive": archive,
                  "runtime": self.recipe.section("targets")[v.target]["runtime"]}
        inputs = {**self.all_outputs(compile_id, "model"), "validation": self.output(validate_id)}
        inputs.update(accuracy.selection_input(self, v.model, v.quantization))
        return self.add(v.stage_id("package"), "package", params, inputs, labels, publish=True)

    def release(self, finals: list[Variant]) -> None:
        """One index over every variant: its package and figures, and its compiled model."""
        entries = []
        inputs: dict[str, InputRef] = {}
        for v in finals:
            entry: dict[str, Any] = {"id": v.id, "model": v.model, "quantization": v.quantization,
                                     "target": v.target, "device": v.device}
            for kind in ("package", "profile", "infer", "validate"):
                stage_id = v.stage_id(kind)
                if stage_id in self.nodes:
                    node = self.nodes[stage_id]
                    # The figures a stage measured, else its one product (the archive).
                    output = (node.measurements or node.outputs)[0]
                    inputs[stage_id] = OutputRef(stage_id, output)
                    entry[kind] = output
            accuracy.release_entry(self, v.model, v.quantization, entry, inputs)
            compile_id = self.compiled[v]
            inputs.update(self.all_outputs(compile_id, f"{v.id}/compiled"))
            entry["compiled"] = list(self.nodes[compile_id].outputs)
            entries.append(entry)
        if not entries:
            return
        params = {"recipe": self.recipe.name, "variants": entries}
        self.add("release/index", "release", params, inputs, publish=True)


def _aihub_device(device: dict[str, Any]) -> dict[str, Any]:
    return {k: device[k] for k in ("name", "attributes", "chipset") if device.get(k)}


def pipeline_nodes(recipe: Recipe) -> list[StageNode]:
    builder = PipelineBuilder(recipe)
    finals = [(v, builder.variant(v)) for v in recipe.variants]
    builder.release([v for v, last in finals if last is not None and
                     recipe.section("devices")[v.device]["backend"] != "aihub"])
    return list(builder.nodes.values())
