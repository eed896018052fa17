"""PyTorch side of a build: load a model source, capture it, export fp32 ONNX, run references,
and the optional BatchNorm folding / cross-layer equalization of the ``optimize`` stage.

Plain functions (paths and numpy arrays in, files and JSON-able dicts out); torch, onnx and
aimet_torch are imported inside them, so importing this module is cheap.

Model sources (``load_model``), relative paths resolved against ``project_dir``:

- ``{"python": "module:callable", "weights": path|None, "seed": int|None, "kwargs": {...}}``:
  ``callable(**kwargs)``, plus ``seed=seed`` when a seed is given (the callable must then
  accept ``seed``). ``weights`` is a state-dict file read with ``torch.load(weights_only=True)``
  (anything that is not a mapping of names to tensors -- a pickled model, arbitrary objects --
  is refused, never unpickled) and loaded strictly: missing, unexpected or mis-shaped keys are a
  ``StageError`` naming the file. A ``{"state_dict": ...}`` / ``{"model_state_dict": ...}``
  wrapper and a ``module.`` (DataParallel) prefix are stripped; missing
  ``num_batches_tracked`` entries are tolerated.
- ``{"torchscript": path}``: ``torch.jit.load``.
- ``{"exported_program": path}``: a ``.pt2`` from ``torch.export.save``; returns ``.module()``.
- ``{"qai_hub_models": "ffnet_40s"}``: ``qai_hub_models.models.<id>.Model.from_pretrained()``
  (needs that package and network access for its weights).

Determinism (checked with torch 2.14.1, onnx 1.23.2, two fresh processes):

- ``export_onnx`` uses the TorchScript-based exporter (``dynamo=False``): byte-identical files
  for the same weights and versions (tiny nets and FFNet-78S-lowres at opset 18). The
  torch.export-based exporter (``dynamo=True``) is not byte-stable and embeds absolute source
  paths, so it is not used. Doc strings are cleared; weights stay inside the file.
- ``capture`` (``torch.export.save``) is byte-identical across processes once the node stack
  traces (absolute source paths) are dropped and the archive is written through a buffer (the
  archive's top folder otherwise follows the file name).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.errors import StageError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "capture",
    "cross_layer_equalize",
    "export_onnx",
    "fold_batchnorm",
    "load_captured",
    "load_model",
    "load_state_dict_file",
    "run_torch",
]

_SHOW = 8  # offending keys listed in an error message
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict")
_ONNX_LIMIT = 2**31 - 2**24  # protobuf's 2 GiB limit, with room for the graph itself


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_model(source: Mapping[str, Any], project_dir: Path) -> nn.Module:
    """The torch model a recipe's ``source`` describes, on the CPU, in eval mode."""
    kinds = [k for k in ("python", "torchscript", "exported_program", "qai_hub_models")
             if source.get(k)]
    if len(kinds) != 1:
        raise StageError("a torch model source needs exactly one of python, torchscript, "
                         f"exported_program, qai_hub_models; got {sorted(source)}")
    kind = kinds[0]
    project_dir = Path(project_dir)
    if kind == "python":
        model = _from_python(source, project_dir)
    elif kind == "torchscript":
        model = _from_torchscript(_resolve(source["torchscript"], project_dir, "torchscript"))
    elif kind == "exported_program":
        model = load_captured(_resolve(source["exported_program"], project_dir,
                                       "exported_program"))
    else:
        model = _from_qai_hub_models(str(source["qai_hub_models"]))
    return _eval(model)


def _eval(model: Any) -> Any:
    with contextlib.suppress(NotImplementedError):  # exported-program modules refuse eval()
        model.eval()
    return model


def _resolve(value: Any, project_dir: Path, key: str) -> Path:
    path = Path(os.fspath(value))
    if not path.is_absolute():
        path = project_dir / path
    if not path.is_file():
        raise StageError(f"source {key}: file {value} does not exist (looked at {path})")
    return path


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    entry = str(directory)
    added = directory.is_dir() and entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def import_callable(spec: str, project_dir: Path | None, what: str) -> Any:
    """``module:attr`` → the object (the module imported with ``project_dir`` on sys.path)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise StageError(f"{what} {spec!r} must look like 'module:callable'")
    context = _on_sys_path(project_dir) if project_dir else contextlib.nullcontext()
    with context:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                where = f"{project_dir} and " if project_dir else ""
                raise StageError(f"{what} {spec!r}: module {module_name!r} not found (looked "
                                 f"in {where}the installed packages)") from e
            raise StageError(f"{what} {spec!r}: importing {module_name} failed: {e}") from e
        except Exception as e:
            raise StageError(f"{what} {spec!r}: importing {module_name} failed "
                             f"({type(e).__name__}: {e})") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StageError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise StageError(f"{what} {spec!r} is not callable")
    return obj


def _from_python(source: Mapping[str, Any], project_dir: Path) -> nn.Module:
    from torch import nn

    entry = source["python"]
    factory = import_callable(entry, project_dir, "source python")
    kwargs = dict(source.get("kwargs") or {})
    seed = source.get("seed")
    if seed is not None:
        if not _accepts(factory, "seed"):
            raise StageError(f"source python {entry!r} does not take a 'seed' argument; "
                             "remove 'seed' from the source or add the parameter")
        kwargs["seed"] = seed
    try:
        model = factory(**kwargs)
    except StageError:
        raise
    except TypeError as e:
        raise StageError(f"source python {entry!r} called with {sorted(kwargs)}: {e}") from e
    if not isinstance(model, nn.Module):
        raise StageError(f"source python {entry!r} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    weights = source.get("weights")
    if weights:
        load_state_dict_file(model, _resolve(weights, project_dir, "weights"))
    return model


def _accepts(func: Any, name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True  # no signature (a builtin): let the call decide
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


def _listing(kind: str, items: Sequence[str]) -> str:
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {kind}: {', '.join(items[:_SHOW])}{more}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``, without ever unpickling arbitrary objects."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects; many kinds for a bad file
        if isinstance(e, pickle.UnpicklingError):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = (f"it references the Python object {found.group(1)}" if found else
                    "it is a pickle that is not a torch.save file of tensors")
            raise StageError(
                f"weights file {path} is not a plain state dict and is refused (it is never "
                f"unpickled): {what}. Save the weights with "
                "torch.save(model.state_dict(), path)") from e
        raise StageError(f"weights file {path} could not be read as a torch state dict "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict):
        raise StageError(f"weights file {path} holds a {type(loaded).__name__}, not a state "
                         "dict (a mapping of names to tensors); save it with "
                         "torch.save(model.state_dict(), path)")
    bad = [str(k) for k, v in loaded.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise StageError(f"weights file {path} is not a plain state dict: "
                         f"{_listing('entries that are not named tensors', bad)}; save it "
                         "with torch.save(model.state_dict(), path)")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k.removeprefix("module."): v for k, v in loaded.items()}
    return loaded


def load_state_dict_file(model: nn.Module, path: Path) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` strictly (see the module docstring)."""
    state = read_state_dict(Path(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = [_listing(kind, items) for kind, items in (
            ("missing keys", missing), ("unexpected keys", unexpected),
            ("shape mismatches", mismatched)) if items]
        raise StageError(f"weights file {path} does not fit the model "
                         f"{type(model).__name__}: " + "; ".join(problems)
                         + ". Check that the file belongs to this model and its kwargs.")
    state = dict(state)
    for k in tolerated:
        state[k] = expected[k]
    model.load_state_dict(state, strict=True)
    return model


def _from_torchscript(path: Path) -> nn.Module:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise StageError(f"torchscript {path} could not be loaded "
                         f"({type(e).__name__}: {_first_line(e)}); give a file written by "
                         "torch.jit.save") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _from_qai_hub_models(model_id: str) -> nn.Module:
    if not re.fullmatch(r"[a-z0-9_]+", model_id):
        raise StageError(f"source qai_hub_models {model_id!r} is not a model id "
                         "(e.g. ffnet_40s)")
    if importlib.util.find_spec("qai_hub_models") is None:
        raise StageError(
            f"source qai_hub_models {model_id!r} needs the qai_hub_models package: "
            "`pip install qai-hub-models` (its weights are downloaded), or give a local "
            "source instead, e.g. {python: 'buildsys.zoo.ffnet:" + model_id
            + "', weights: path/to/state_dict.pth}")
    try:
        module = importlib.import_module(f"qai_hub_models.models.{model_id}")
    except ModuleNotFoundError as e:
        raise StageError(f"qai_hub_models has no model {model_id!r} ({e})") from e
    try:
        return module.Model.from_pretrained()
    except Exception as e:
        raise StageError(f"qai_hub_models {model_id}: Model.from_pretrained() failed "
                         f"({type(e).__name__}: {_first_line(e)}); it downloads weights, "
                         "so it needs network access") from e


# --------------------------------------------------------------------------------------------
# Capture (torch.export / TorchScript)
# --------------------------------------------------------------------------------------------


def _tensors(example_inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs.values())


def _strip_stack_traces(program: Any) -> None:
    import torch

    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)


def capture(model: nn.Module, example_inputs: Mapping[str, np.ndarray],
            dst: Path) -> dict[str, Any]:
    """Capture ``model`` with ``torch.export`` and save the program to ``dst`` (``.pt2``).

    If torch.export fails (data-dependent control flow, ...), fall back to ``torch.jit.trace``
    and save TorchScript to ``dst`` with the suffix ``.pt`` instead. Returns
    ``{"format": "exported_program"|"torchscript", "path": <file written>,
    "export_error": <why torch.export failed, only on fallback>}``. Both are written through
    a buffer so the bytes do not depend on the file name.
    """
    import torch

    dst = Path(dst)
    args = _tensors(example_inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args)
        _strip_stack_traces(program)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        dst.write_bytes(buffer.getvalue())
        return {"format": "exported_program", "path": str(dst)}
    except Exception as e:
        export_error = f"{type(e).__name__}: {_first_line(e)}"
    target = dst.with_suffix(".pt")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, args, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
    except Exception as e:
        raise StageError(f"could not capture {type(model).__name__}: torch.export failed "
                         f"({export_error}) and torch.jit.trace failed "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    target.write_bytes(buffer.getvalue())
    return {"format": "torchscript", "path": str(target), "export_error": export_error}


def load_captured(path: Path) -> nn.Module:
    """Load what ``capture`` wrote: an exported program (``.module()``) or TorchScript."""
    import zipfile

    import torch

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise StageError(f"{path} is not a torch.export (.pt2) or TorchScript archive "
                         f"({e})") from e
    if any(n.endswith("/archive_format") for n in names):
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:
            raise StageError(f"exported program {path} could not be loaded "
                             f"({type(e).__name__}: {_first_line(e)})") from e
    return _from_torchscript(path)


# --------------------------------------------------------------------------------------------
# ONNX export and reference runs
# --------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example_inputs: Mapping[str, np.ndarray],
                output_names: Sequence[str], dst: Path, opset: int = 18) -> dict[str, Any]:
    """fp32 ONNX of ``model`` at ``dst``, inputs named like ``example_inputs`` (in order),
    outputs named ``output_names``; static shapes (those of the examples).

    Uses the TorchScript-based exporter (byte-identical re-exports), constant folding,
    BatchNorm folded into the preceding convolutions in float64 (the same bytes on every
    CPU: `onnx_bn_fold`), weights inside the file, all doc
    strings cleared; the result passes ``onnx.checker.check_model``.
    """
    import onnx
    import torch

    from buildsys.backends.onnx_bn_fold import fold_batchnorms

    if opset < 18:
        raise StageError(f"ONNX opset {opset} is too old: modelbuild needs opset ≥ 18")
    names_in = list(example_inputs)
    names_out = list(output_names)
    if not names_in:
        raise StageError("export_onnx needs at least one example input")
    overlap = sorted(set(names_in) & set(names_out))
    if overlap or len(set(names_out)) != len(names_out):
        raise StageError(f"ONNX input and output names must be distinct: inputs {names_in}, "
                         f"outputs {names_out}")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor))
    if size > _ONNX_LIMIT:
        raise StageError(f"{type(model).__name__} has {size / 2**30:.1f} GiB of weights: "
                         "export_onnx keeps weights inside the file, which ONNX limits to 2 GiB")
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, _tensors(example_inputs), buffer, input_names=names_in,
                              output_names=names_out, opset_version=opset, dynamo=False,
                              do_constant_folding=True, export_params=True,
                              # PRESERVE (the model is in eval mode) keeps the exporter from
                              # folding BatchNorm with CPU-dependent float32 kernels; it is
                              # folded below in float64 instead.
                              training=torch.onnx.TrainingMode.PRESERVE)
    except Exception as e:
        raise StageError(f"ONNX export of {type(model).__name__} at opset {opset} failed: "
                         f"{type(e).__name__}: {_first_line(e)}") from e
    proto = onnx.load_from_string(buffer.getvalue())
    fold_batchnorms(proto)
    produced = [o.name for o in proto.graph.output]
    if produced != names_out:
        raise StageError(f"{type(model).__name__} returns {len(produced)} output(s) but "
                         f"{len(names_out)} output name(s) were given ({names_out}): "
                         "list one name per model output")
    _clear_doc_strings(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise StageError(f"exported ONNX for {type(model).__name__} fails the ONNX checker: "
                         f"{_first_line(e)}") from e
    data = proto.SerializeToString(deterministic=True)
    Path(dst).write_bytes(data)
    return {
        "opset": opset,
        "exporter": f"torch.onnx (TorchScript-based) {torch.__version__.split('+')[0]}",
        "inputs": {n: _shape(v) for n, v in _value_infos(proto.graph.input)},
        "outputs": {n: _shape(v) for n, v in _value_infos(proto.graph.output)},
        "nodes": len(proto.graph.node),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _clear_doc_strings(proto: Any) -> None:
    proto.doc_string = ""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.doc_string = ""
        for tensor in graph.initializer:
            tensor.doc_string = ""


def _value_infos(values: Any) -> list[tuple[str, Any]]:
    return [(v.name, v) for v in values]


def _shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def run_torch(model: nn.Module, samples: Sequence[Mapping[str, np.ndarray]],
              output_names: Sequence[str] | None = None,
              input_names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """fp32 reference outputs: ``model(*inputs)`` for each sample, keyed by ``output_names``
    (default ``output_0``, ...). Inputs are passed positionally in ``input_names`` order
    (default: each sample's key order). Tuple/list/dict outputs are flattened in order."""
    import torch

    results: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for index, sample in enumerate(samples):
            names = list(input_names) if input_names is not None else list(sample)
            missing = [n for n in names if n not in sample]
            if missing:
                raise StageError(f"sample {index} has no input {missing[0]!r} "
                                 f"(it has {', '.join(sorted(sample))})")
            args = [torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names]
            outputs = _flatten(model(*args))
            keys = (list(output_names) if output_names is not None
                    else [f"output_{i}" for i in range(len(outputs))])
            if len(keys) != len(outputs):
                raise StageError(f"{type(model).__name__} returned {len(outputs)} output(s) "
                                 f"but {len(keys)} output name(s) were given ({keys})")
            results.append({k: v.detach().cpu().numpy().copy() for k, v in zip(keys, outputs,
                                                                                strict=True)})
    return results


def _flatten(value: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flatten(v)]
    raise StageError(f"model output of type {type(value).__name__} is not a tensor, "
                     "tuple, list or dict of tensors")


# --------------------------------------------------------------------------------------------
# Optimisation: BatchNorm folding, cross-layer equalization
# --------------------------------------------------------------------------------------------


def _aimet_available() -> bool:
    return importlib.util.find_spec("aimet_torch") is not None


def _dummy(model: nn.Module, example_inputs: Mapping[str, np.ndarray] | None,
           what: str) -> Any:
    if not example_inputs:
        raise StageError(f"{what} with aimet_torch needs example inputs to trace "
                         f"{type(model).__name__}")
    args = _tensors(example_inputs)
    return args[0] if len(args) == 1 else args


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """aimet traces with torch.jit (FutureWarnings) and logs graph warnings: keep stderr clean."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def fold_batchnorm(model: nn.Module, example_inputs: Mapping[str, np.ndarray] | None = None,
                   engine: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Fold BatchNorm layers into the adjacent convolution / linear layers.

    Works on a deep copy (the given model is left unchanged) and returns ``(folded, info)``
    with ``info = {"engine": ..., "batchnorms_folded": n, "pairs": [[layer, bn], ...]}``.
    ``engine``: ``"aimet"`` (``aimet_torch.batch_norm_fold.fold_all_batch_norms``; needs
    ``example_inputs``), ``"torch"`` (``torch.fx`` to find conv→BN pairs whose conv output
    feeds only the BN, folded in float64 by ``_fuse_exactly`` — the same bytes on every CPU —,
    the BN replaced by ``nn.Identity``) or ``"auto"`` (aimet when installed).
    """
    if engine not in ("auto", "aimet", "torch"):
        raise StageError(f"fold_batchnorm engine must be auto, aimet or torch, not {engine!r}")
    if engine == "aimet" or (engine == "auto" and _aimet_available()):
        return _fold_aimet(model, example_inputs)
    return _fold_torch(model)


def _fold_aimet(model: nn.Module, example_inputs: Mapping[str, np.ndarray] | None
                ) -> tuple[nn.Module, dict[str, Any]]:
    dummy = _dummy(model, example_inputs, "BatchNorm folding")
    with _quiet():
        from aimet_torch.batch_norm_fold import fold_all_batch_norms

        # aimet folds in place and may share modules with its input: work on a copy.
        folded = copy.deepcopy(model).eval()
        names = _names(folded)
        try:
            pairs = fold_all_batch_norms(folded, None, dummy_input=dummy)
        except Exception as e:
            raise StageError(f"aimet_torch could not fold the BatchNorms of "
                             f"{type(model).__name__}: {type(e).__name__}: {_first_line(e)}"
                             ) from e
    listed = [[names.get(id(layer), "?"), names.get(id(bn), "?")] for layer, bn in pairs]
    return folded, {"engine": f"aimet_torch {_version('aimet-torch')}",
                    "batchnorms_folded": len(listed), "pairs": listed}


def _fuse_exactly(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """`layer` (conv or linear) with the inference BatchNorm after it folded in, the same
    bytes on every CPU (`onnx_bn_fold.fold_into_layer`: float64, rounded once); torch's own
    folding uses `torch.sqrt`, whose MKL kernel rounds differently per CPU."""
    import torch
    from torch import nn

    from buildsys.backends.onnx_bn_fold import fold_into_layer

    def array(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().numpy()

    mean = array(bn.running_mean)
    ones, zeros = np.ones_like(mean), np.zeros_like(mean)
    gamma, beta = array(bn.weight), array(bn.bias)
    weight, bias = fold_into_layer(array(layer.weight), array(layer.bias),
                                   ones if gamma is None else gamma,
                                   zeros if beta is None else beta,
                                   mean, array(bn.running_var), float(bn.eps))
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(torch.from_numpy(weight), requires_grad=False)
    fused.bias = nn.Parameter(torch.from_numpy(bias), requires_grad=False)
    return fused


def _fold_torch(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    import torch
    from torch import nn

    folded = copy.deepcopy(model).eval()
    try:
        traced = torch.fx.symbolic_trace(folded)
    except Exception as e:
        raise StageError(f"torch.fx cannot trace {type(model).__name__} to find its "
                         f"conv→BatchNorm pairs ({type(e).__name__}: {_first_line(e)}); "
                         "install aimet-torch for its BatchNorm folding") from e
    modules = dict(folded.named_modules())
    pairs: list[list[str]] = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target),
                                                      nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        producer = node.args[0] if node.args else None
        if (not isinstance(producer, torch.fx.Node) or producer.op != "call_module"
                or len(producer.users) != 1):
            continue
        layer, bn = modules[producer.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        conv = isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not isinstance(
            layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d)
        if not (conv or (isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d))):
            continue
        fused = _fuse_exactly(layer, bn)
        _set_submodule(folded, producer.target, fused)
        _set_submodule(folded, node.target, nn.Identity())
        pairs.append([producer.target, node.target])
    return folded, {"engine": f"torch {torch.__version__.split('+')[0]} (fx)",
                    "batchnorms_folded": len(pairs), "pairs": pairs}


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def cross_layer_equalize(model: nn.Module, example_inputs: Mapping[str, np.ndarray]
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """AIMET cross-layer equalization: fold BatchNorms, cross-layer scaling of consecutive
    conv pairs, high-bias folding -- what ``aimet_torch.cross_layer_equalization.equalize_model``
    does, step by step so the pairs can be reported. Works on a deep copy; returns
    ``(equalized, info)`` with the folded BN pairs and the scaled layer pairs."""
    if not _aimet_available():
        raise StageError("cross-layer equalization needs aimet_torch: "
                         "`pip install aimet-torch` (or use optimize: {fold_batchnorm: true})")
    dummy = _dummy(model, example_inputs, "cross-layer equalization")
    with _quiet():
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.cross_layer_equalization import CrossLayerScaling, HighBiasFold

        equalized = copy.deepcopy(model).eval()
        names = _names(equalized)
        try:
            folded = fold_all_batch_norms(equalized, None, dummy_input=dummy)
            cls_sets = CrossLayerScaling().scale_model(equalized, None, dummy_input=dummy)
            HighBiasFold.bias_fold(cls_sets, dict(folded))
        except Exception as e:
            raise StageError(f"aimet_torch cross-layer equalization of "
                             f"{type(model).__name__} failed: {type(e).__name__}: "
                             f"{_first_line(e)}") from e
    scaled = [[names.get(id(p.layer1), "?"), names.get(id(p.layer2), "?")]
              for info in cls_sets for p in info.cls_pair_info_list]
    return equalized, {
        "engine": f"aimet_torch {_version('aimet-torch')}",
        "batchnorms_folded": len(folded),
        "folded_pairs": [[names.get(id(a), "?"), names.get(id(b), "?")] for a, b in folded],
        "cls_sets": len(cls_sets),
        "cls_pairs": scaled,
    }


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
