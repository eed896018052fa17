"""Checks the schema cannot express: cross references, impossible combinations, missing files."""

from __future__ import annotations

import difflib
import glob
import itertools
from pathlib import Path, PurePosixPath
from typing import Any

from buildsys.recipe.matrix import AXES, as_list, excluded
from buildsys.recipe.model_source import is_keras, is_torch, source_files
from buildsys.recipe.yaml_source import YamlDocument, format_path

SECTION_OF_AXIS = {
    "model": "models",
    "quantization": "quantization",
    "target": "targets",
    "device": "devices",
}
BUILTIN_SCHEMES = {"float"}
# Local targets converted from the model itself, not from its ONNX export: what they read.
TORCH_SOURCES_OF = {"ncnn": "a torch model (pnnx)", "executorch": "a torch model (torch.export)",
                    "tflite": "a torch model (litert-torch) or a Keras file (TFLite converter)"}

# Which runtimes each device backend can run (AI Hub compiles and runs all of them remotely).
RUNTIMES_BY_BACKEND = {
    "host": {"onnx", "tflite", "ncnn", "executorch"},
    "qnn-htp-simulator": {"qnn_context_binary"},
    "aihub": {"onnx", "qnn_context_binary", "tflite", "qnn_dlc", "precompiled_qnn_onnx"},
    "cuda": {"tensorrt"},
}


def reference_problems(doc: YamlDocument, project_dir: Path) -> list[str]:
    data: dict[str, Any] = doc.data
    checker = _Checker(doc, project_dir)
    checker.check_builds(data)
    checker.check_datasets_referenced(data)
    checker.check_targets(data)
    checker.check_devices(data)
    checker.check_files(data)
    checker.check_steps(data)
    checker.check_settings(data)
    return checker.problems


class _Checker:
    def __init__(self, doc: YamlDocument, project_dir: Path) -> None:
        self.doc = doc
        self.project_dir = project_dir
        self.problems: list[str] = []

    def report(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(f"{self.doc.where(path)}: {format_path(path)}: {message}")

    def _declared(self, axis: str) -> set[str]:
        names = set(self.doc.data.get(SECTION_OF_AXIS[axis]) or {})
        return names | BUILTIN_SCHEMES if axis == "quantization" else names

    def _name_ref(self, path: tuple[str | int, ...], axis: str, name: str) -> None:
        declared = self._declared(axis)
        if name not in declared:
            hint = difflib.get_close_matches(name, sorted(declared), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            self.report(
                path,
                f"{axis} {name!r} is not declared under {SECTION_OF_AXIS[axis]}{suggestion}",
            )

    def check_builds(self, data: dict[str, Any]) -> None:
        targets = data.get("targets") or {}
        devices = data.get("devices") or {}
        schemes = data.get("quantization") or {}
        for index, entry in enumerate(data.get("builds") or []):
            for axis in AXES:
                values = as_list(entry[axis])
                for pos, name in enumerate(values):
                    path = ("builds", index, axis) if isinstance(entry[axis], str) else (
                        "builds", index, axis, pos)
                    self._name_ref(path, axis, name)
            for rule_index, rule in enumerate(entry.get("exclude") or []):
                for axis in AXES:
                    for name in as_list(rule.get(axis, [])):
                        self._name_ref(("builds", index, "exclude", rule_index, axis), axis, name)
            self._check_combinations(index, entry, targets, devices, schemes)

    def _check_combinations(self, index: int, entry: dict[str, Any], targets: dict[str, Any],
                            devices: dict[str, Any], schemes: dict[str, Any]) -> None:
        """Impossible pairs among the variants this entry really expands to (after exclude)."""
        reported: set[tuple[str, ...]] = set()
        for combo in itertools.product(*(as_list(entry[axis]) for axis in AXES)):
            values = dict(zip(AXES, combo, strict=True))
            if excluded(values, entry.get("exclude") or []):
                continue
            target, device = targets.get(values["target"]), devices.get(values["device"])
            if not target or not device:
                continue
            pair = (values["target"], values["device"])
            if target["runtime"] not in RUNTIMES_BY_BACKEND[device["backend"]]:
                if pair not in reported:
                    reported.add(pair)
                    can = ", ".join(sorted(RUNTIMES_BY_BACKEND[device["backend"]]))
                    self.report(("builds", index, "device"),
                                f"device {values['device']!r} ({device['backend']}) cannot run "
                                f"target {values['target']!r} (runtime {target['runtime']}); "
                                f"it runs: {can}")
                continue
            if device["backend"] != "aihub":
                self._check_source_on_target(index, values["model"], values["target"], target,
                                             reported)
            triple = (values["quantization"], *pair)
            if triple not in reported:
                reported.add(triple)
                self._check_scheme_on_target(index, values["quantization"], schemes,
                                             values["target"], target, [device])

    def _check_source_on_target(self, index: int, model_name: str, target_name: str,
                                target: dict[str, Any], reported: set[tuple[str, ...]]) -> None:
        """Local converters that start from the model itself need a source they can read."""
        source = ((self.doc.data.get("models") or {}).get(model_name) or {}).get("source") or {}
        runtime = target["runtime"]
        readers = TORCH_SOURCES_OF.get(runtime)
        if readers is None or is_torch(source) or (runtime == "tflite" and is_keras(source)):
            return
        if (model_name, target_name) in reported:
            return
        reported.add((model_name, target_name))
        self.report(("builds", index, "target"),
                    f"target {target_name!r} ({runtime}) converts {readers}; model "
                    f"{model_name!r} has a {'/'.join(sorted(source)) or 'missing'} source")

    def _check_scheme_on_target(self, index: int, scheme_name: str, schemes: dict[str, Any],
                                target_name: str, target: dict[str, Any],
                                devices: list[dict[str, Any] | None]) -> None:
        local = any(d and d["backend"] != "aihub" for d in devices)
        if scheme_name == "float" and target["runtime"] == "qnn_context_binary" and target.get(
                "float") == "refuse" and local:
            self.report(("builds", index, "quantization"),
                        f"target {target_name!r} refuses float models on HTP "
                        f"(set targets.{target_name}.float: fp16, or quantize)")
        if target["runtime"] == "tflite" and scheme_name != "float" and local:
            self.report(("builds", index, "quantization"),
                        f"local tflite target {target_name!r} converts the float torch model; "
                        f"scheme {scheme_name!r} needs an aihub device")
        scheme = schemes.get(scheme_name)
        runtime = target["runtime"]
        if runtime == "ncnn" and scheme_name != "float":
            self.report(("builds", index, "quantization"),
                        f"ncnn target {target_name!r} converts the float torch model (pnnx; "
                        f"storage fp16 or fp32): NCNN's int8 tools (ncnn2table, ncnn2int8) are "
                        f"not in the pip wheels, so scheme {scheme_name!r} cannot apply")
        pt2e = bool(scheme) and scheme["engine"] == "pt2e"
        if runtime == "executorch" and scheme_name != "float" and not pt2e:
            self.report(("builds", index, "quantization"),
                        f"executorch target {target_name!r} quantizes the torch model itself: "
                        f"scheme {scheme_name!r} must have engine: pt2e")
        if pt2e and runtime != "executorch":
            self.report(("builds", index, "quantization"),
                        f"scheme {scheme_name!r} (engine pt2e) quantizes for ExecuTorch: "
                        f"target {target_name!r} (runtime {runtime}) cannot use it")
        if scheme and runtime == "qnn_context_binary" and local:
            self._check_htp_precision(index, scheme_name, scheme, target_name, target, devices)
        if scheme and scheme["engine"] == "aihub" and not any(
                d and d["backend"] == "aihub" for d in devices) and not (
                self.doc.data.get("devices") or {}):
            self.report(("quantization", scheme_name, "engine"), "aihub engine needs AI Hub")

    def _check_htp_precision(self, index: int, scheme_name: str, scheme: dict[str, Any],
                             target_name: str, target: dict[str, Any],
                             devices: list[dict[str, Any] | None]) -> None:
        """What QNN's HTP runs: 8/16-bit activation mixes (with Convert ops) on every arch;
        float layers only in its fp16 mode, which HTP has from v69 on."""
        from buildsys.chipsets import CHIPSETS

        floats = bool((scheme.get("mixed") or {}).get("float")) or scheme["engine"] == "auto"
        if not floats:
            return
        what = ("quantization: auto (its last rung is fp16)" if scheme["engine"] == "auto"
                else f"scheme {scheme_name!r} keeps layers float (mixed.float)")
        if target.get("float") == "refuse":
            self.report(("builds", index, "quantization"),
                        f"{what}, but target {target_name!r} refuses float on HTP "
                        f"(set targets.{target_name}.float: fp16)")
        for device in devices:
            chip = CHIPSETS.get((device or {}).get("chipset", ""))
            if chip is not None and chip.htp_arch < 69:
                self.report(("builds", index, "device"),
                            f"{what}: HTP v{chip.htp_arch} ({chip.name}) has no fp16 mode "
                            "for float layers (v69 and later do)")

    def check_datasets_referenced(self, data: dict[str, Any]) -> None:
        datasets = data.get("datasets") or {}
        for name, scheme in (data.get("quantization") or {}).items():
            self._dataset_ref(("quantization", name, "calibration"), scheme["calibration"],
                              datasets, "calibration", scheme.get("samples"))
            if scheme["engine"] != "onnxruntime" and scheme["engine"] != "auto":
                for key in ("mixed", "budget", "objective", "promote", "rungs"):
                    if key in scheme:
                        self.report(("quantization", name, key),
                                    f"{key} applies to the onnxruntime or auto engines, not "
                                    f"{scheme['engine']}")
            if scheme["engine"] == "auto":
                for key in ("weights", "activations", "method", "per_channel", "mixed"):
                    if key in scheme:
                        self.report(("quantization", name, key),
                                    f"{key} is chosen by the auto ladder; remove it")
                if "dataset" not in (data.get("validate") or {}):
                    self.report(("quantization", name, "budget"),
                                "quantization: auto scores rungs on the validation data: "
                                "set validate: dataset")
        validate = data.get("validate") or {}
        if "dataset" in validate:
            self._dataset_ref(("validate", "dataset"), validate["dataset"], datasets, "validation",
                              None)
        self._labelled_thresholds(data, datasets.get(validate.get("dataset", "")) or {})

    def _labelled_thresholds(self, data: dict[str, Any], dataset: dict[str, Any]) -> None:
        """mIoU/top-k thresholds compare against labels: the validation data must have them."""
        if dataset.get("labels"):
            return
        places: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [
            (("validate",), data.get("validate") or {})]
        for name, scheme in (data.get("quantization") or {}).items():
            for key in ("validate", "budget"):
                places.append((("quantization", name, key), scheme.get(key) or {}))
        for index, entry in enumerate(data.get("builds") or []):
            places.append((("builds", index, "validate"), entry.get("validate") or {}))
        for path, thresholds in places:
            for key in thresholds:
                if key.startswith(("miou_", "pixel_accuracy_", "top5_")) or key == "top1_drop_max":
                    self.report((*path, key), "compares against labels, but the validation "
                                              "dataset has none (add labels: to it)")

    def _dataset_ref(self, path: tuple[str, ...], name: str, datasets: dict[str, Any],
                     split: str, samples: int | None) -> None:
        if name not in datasets:
            hint = difflib.get_close_matches(name, sorted(datasets), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            self.report(path, f"dataset {name!r} is not declared under datasets{suggestion}")
            return
        available = datasets[name].get(split)
        if available == 0:
            self.report(path, f"dataset {name!r} has an empty {split} split")
        elif samples is not None and available is not None and samples > available:
            self.report(path, f"asks for {samples} {split} samples but dataset {name!r} "
                              f"has {available} in its {split} split")

    def check_targets(self, data: dict[str, Any]) -> None:
        for name, target in (data.get("targets") or {}).items():
            if target.get("link") and target["runtime"] != "qnn_context_binary":
                self.report(("targets", name, "link"),
                            f"link makes a QNN context binary from a DLC: it needs runtime "
                            f"qnn_context_binary, not {target['runtime']}")
            if "link_options" in target and not target.get("link"):
                self.report(("targets", name, "link_options"),
                            "link_options without link: true has no effect")
            if "storage" in target and target["runtime"] != "ncnn":
                self.report(("targets", name, "storage"),
                            f"storage is how an ncnn .bin stores weights: runtime "
                            f"{target['runtime']} has no such option")
        for name, scheme in (data.get("quantization") or {}).items():
            if "qat" in scheme and scheme["engine"] != "aimet":
                self.report(("quantization", name, "qat"),
                            f"quantization-aware training runs in AIMET: engine "
                            f"{scheme['engine']} cannot train (use engine: aimet)")
            if scheme["engine"] == "pt2e" and (scheme["weights"], scheme["activations"]) != (
                    "int8", "int8"):
                self.report(("quantization", name),
                            "engine pt2e (ExecuTorch's XNNPACK quantizer) makes w8a8 only: "
                            "weights: int8, activations: int8")

    def check_devices(self, data: dict[str, Any]) -> None:
        for name, device in (data.get("devices") or {}).items():
            path = ("devices", name)
            backend = device["backend"]
            if backend == "qnn-htp-simulator":
                from buildsys.chipsets import CHIPSETS

                known = set(CHIPSETS)
                chipset = device.get("chipset")
                if not chipset:
                    self.report(path, "qnn-htp-simulator needs a chipset (e.g. sm8550)")
                elif chipset not in known:
                    hint = difflib.get_close_matches(chipset, sorted(known), n=1)
                    suggestion = f"did you mean {hint[0]!r}? " if hint else ""
                    self.report((*path, "chipset"), f"unknown chipset {chipset!r}; {suggestion}"
                                f"known: {', '.join(sorted(known))}")
            if backend == "aihub" and not (device.get("name") or device.get("attributes")):
                self.report(path, "an aihub device needs a name or attributes")

    def check_files(self, data: dict[str, Any]) -> None:
        for name, model in (data.get("models") or {}).items():
            source = model["source"]
            for key, path in source_files(source).items():
                self._file_exists(("models", name, "source", key), path)
        for name, dataset in (data.get("datasets") or {}).items():
            if "images" in dataset:
                pattern = str(self.project_dir / dataset["images"])
                if not glob.glob(pattern, recursive=True):
                    self.report(("datasets", name, "images"),
                                f"glob {dataset['images']!r} matches no file")
            for key in ("npz", "npy"):
                if key in dataset:
                    self._file_exists(("datasets", name, key), dataset[key])
            if "skimage" in dataset or ("images" in dataset and not self.problems):
                self._dataset_files(name, dataset)
            if dataset.get("labels") and not self.problems:
                self._label_files(name, dataset)

    def _label_files(self, name: str, dataset: dict[str, Any]) -> None:
        """Masks that match no image, a missing class-id file: known before anything runs."""
        from buildsys.errors import StageError
        from buildsys.recipe.dataset_files import label_files, label_kind

        try:
            label_kind(dataset["labels"])
            label_files(dataset, self.project_dir)
        except StageError as exc:
            key = next((k for k in ("masks", "file") if k in dataset["labels"]), None)
            self.report(("datasets", name, "labels", *([key] if key else [])), str(exc))

    def _dataset_files(self, name: str, dataset: dict[str, Any]) -> None:
        """Unknown sample photos, too few images for the splits: known before any stage runs."""
        from buildsys.errors import StageError
        from buildsys.recipe.dataset_files import input_files

        try:
            input_files(dataset, self.project_dir)
        except StageError as exc:
            key = "skimage" if "skimage" in dataset else "images"
            self.report(("datasets", name, key), str(exc))

    def _file_exists(self, path: tuple[str, ...], relative: str) -> None:
        if not (self.project_dir / relative).is_file():
            self.report(path, f"file {relative!r} does not exist (relative to {self.project_dir})")

    def check_steps(self, data: dict[str, Any]) -> None:
        produced: dict[str, str] = {}
        for name, step in (data.get("steps") or {}).items():
            for pos, out in enumerate(step["outs"]):
                path = ("steps", name, "outs", pos)
                if not is_safe_relative(out):
                    self.report(path, f"output {out!r} must be a relative path inside the project")
                elif out in produced:
                    self.report(path, f"output {out!r} is also written by step {produced[out]!r}")
                else:
                    produced[out] = name
        for name, step in (data.get("steps") or {}).items():
            for pos, dep in enumerate(step.get("deps") or []):
                path = ("steps", name, "deps", pos)
                if not is_safe_relative(dep):
                    self.report(path, f"input {dep!r} must be a relative path inside the project")
                elif dep not in produced and not (self.project_dir / dep).is_file():
                    self.report(path, f"input {dep!r} is neither a file (relative to "
                                      f"{self.project_dir}) nor another step's output")


    def check_settings(self, data: dict[str, Any]) -> None:
        """The build writes into these directories: they must stay inside the project."""
        for key in ("build_dir", "dist_dir"):
            value = (data.get("settings") or {}).get(key)
            if isinstance(value, str) and not is_safe_relative(value):
                self.report(("settings", key), f"{value!r} must be a relative path inside the "
                                               f"project (the build writes there)")


def is_safe_relative(path: str) -> bool:
    """A relative POSIX path that stays inside its base (no `..`, not absolute, not empty)."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path
