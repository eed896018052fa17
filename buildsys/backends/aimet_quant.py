"""AIMET post-training quantization of a torch model to a QDQ ONNX file.

Every later stage (ORT validation, QNN compile, profiling) takes one format: a standard-domain
QDQ ONNX (``QuantizeLinear``/``DequantizeLinear``, opset 21 so that 16-bit activations and
4-bit weights are expressible) written by ``aimet_torch.onnx.export``.

torch and aimet_torch are imported inside the function (``import aimet_torch`` costs 5-7 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.backends.samples import check_sample
from buildsys.backends.torch_models import fold_batchnorm
from buildsys.errors import StageError

if TYPE_CHECKING:
    import torch

QUANT_SCHEMES = ("tf_enhanced", "min_max")
WEIGHT_BITWIDTHS = (4, 8, 16)
ACTIVATION_BITWIDTHS = (8, 16)
# QuantizeLinear/DequantizeLinear with (u)int16 or (u)int4 need opset 21.
MIN_OPSET = 21


def config_aliases() -> dict[str, str]:
    """Config-file aliases known to the installed aimet-torch: alias -> JSON file name."""
    from aimet_torch.common.quantsim_config import quantsim_config

    aliases = getattr(quantsim_config, "_config_file_aliases", None)
    config_dir = Path(quantsim_config.__file__).parent
    if isinstance(aliases, dict):
        return {k: v for k, v in aliases.items() if (config_dir / v).is_file()}
    # Fallback if the private table moves: derive "htp_v73" from htp_quantsim_config_v73.json.
    found: dict[str, str] = {}
    for f in sorted(config_dir.glob("*_quantsim_config_v*.json")):
        backend, _, version = f.stem.partition("_quantsim_config_")
        if version.startswith("v") and version[1:].isdigit():
            found[f"{backend}_{version}"] = f.name
    return found


def _resolve_config(config: str | os.PathLike[str]) -> tuple[str, str, str]:
    """Return (what aimet gets, name recorded in the info dict, sha256 of the JSON)."""
    from aimet_torch.common.quantsim_config import quantsim_config

    config_str = os.fspath(config)
    aliases = config_aliases()
    if config_str in aliases:
        # Hand aimet the file, not the alias: aimet tries the alias as a path relative to the
        # current directory first, so a stray file named like an alias would shadow it.
        file = Path(quantsim_config.__file__).parent / aliases[config_str]
        return str(file), config_str, hashlib.sha256(file.read_bytes()).hexdigest()
    path = Path(config_str)
    looks_like_path = path.suffix == ".json" or os.sep in config_str or path.exists()
    if looks_like_path:
        if not path.is_file():
            raise StageError(f"AIMET config file {config_str!r} does not exist")
        data = path.read_bytes()
        try:
            json.loads(data)
        except ValueError as e:
            raise StageError(f"AIMET config file {config_str!r} is not valid JSON: {e}") from e
        return str(path.resolve()), path.name, hashlib.sha256(data).hexdigest()
    raise StageError(
        f"unknown AIMET config {config_str!r}: use one of {', '.join(sorted(aliases))} "
        "(aliases of the installed aimet-torch) or the path of a quantsim config JSON file"
    )



def _to_tensors(sample: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a).copy()) for a in sample.values())


def _flatten_outputs(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for o in out:
            flat.extend(_flatten_outputs(o))
        return flat
    if isinstance(out, dict):
        return _flatten_outputs(list(out.values()))
    raise StageError(f"model output of type {type(out).__name__} is not a tensor/tuple/list/dict")


def _count_quantizers(sim_model: torch.nn.Module) -> dict[str, int]:
    from aimet_torch.nn import QuantizationMixin

    params = inputs = outputs = 0
    for module in sim_model.modules():
        if not isinstance(module, QuantizationMixin):
            continue
        params += sum(q is not None for q in module.param_quantizers.values())
        inputs += sum(q is not None for q in module.input_quantizers)
        outputs += sum(q is not None for q in module.output_quantizers)
    return {"param": params, "activation": inputs + outputs}


def _names(given: Sequence[str] | None, default: list[str], what: str) -> list[str]:
    if given is None:
        return default
    names = list(given)
    if len(names) != len(default) or len(set(names)) != len(names):
        raise StageError(
            f"{what} {names} must be {len(default)} distinct name(s) (the model has "
            f"{len(default)} {what.split('_')[0]}(s))"
        )
    return names


def quantize_aimet(
    model: torch.nn.Module,
    example_inputs: dict[str, np.ndarray],
    calibration: list[dict[str, np.ndarray]],
    dst: Path,
    *,
    weights_bw: int = 8,
    activations_bw: int = 16,
    quant_scheme: str = "tf_enhanced",
    config: str | os.PathLike[str] = "htp_v73",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = 21,
    train: Callable[..., Any] | None = None,
    train_splits: dict[str, list[dict[str, np.ndarray]]] | None = None,
    epochs: int = 1,
) -> dict[str, Any]:
    """Quantize ``model`` with AIMET and write a QDQ ONNX to ``dst``.

    ``example_inputs`` maps input name -> array; the model is called positionally in that
    order. ``input_names`` defaults to its keys, ``output_names`` to ``output`` (one output)
    or ``output_0``, ``output_1``, ... The caller's model is not modified. Torch uses the
    thread count the caller set (``torch.set_num_threads``). Returns a JSON-able info dict.

    Quantization-aware training: with ``train``, after the encodings are computed the
    QuantSim model is fine-tuned by ``train(sim_model, splits, epochs=epochs)`` (and
    ``reference=<the float model>`` when the callable takes it, e.g. to distil from it),
    with gradients on, torch seeded with 0; then it is exported like PTQ. ``splits`` maps
    split names to lists of samples (input name -> array). Whatever JSON-able value the
    callable returns is recorded under ``qat.result``.
    """
    if quant_scheme not in QUANT_SCHEMES:
        raise StageError(f"quant_scheme {quant_scheme!r} is not one of {list(QUANT_SCHEMES)}")
    if weights_bw not in WEIGHT_BITWIDTHS:
        raise StageError(f"weights_bw {weights_bw!r} is not one of {list(WEIGHT_BITWIDTHS)}")
    if activations_bw not in ACTIVATION_BITWIDTHS:
        raise StageError(
            f"activations_bw {activations_bw!r} is not one of {list(ACTIVATION_BITWIDTHS)}"
        )
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise StageError(
            f"opset {opset!r} is too old: the QDQ export needs opset >= {MIN_OPSET} "
            "(16-bit activations and 4-bit weights)"
        )
    if not example_inputs:
        raise StageError("example_inputs is empty: the model needs at least one named input")
    example = {k: np.asarray(v) for k, v in example_inputs.items()}
    if not calibration:
        raise StageError("calibration is empty: AIMET needs at least one calibration sample")
    for i, sample in enumerate(calibration):
        check_sample(f"calibration sample {i}", sample, example)
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise StageError(f"output directory {str(dst.parent)!r} does not exist")

    import copy

    import torch

    config_for_aimet, config_name, config_sha = _resolve_config(config)

    import aimet_torch
    import aimet_torch.onnx
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    threads = torch.get_num_threads()
    example_t = _to_tensors(example)
    calib_t = [_to_tensors(s) for s in calibration]

    # No randomness is expected below, but any that AIMET/torch might draw comes from a fixed
    # seed, without touching the caller's RNG state.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
        torch.manual_seed(0)
        _silence_known_warnings()
        # prepare_model shares modules with its input and folding mutates them: copy first.
        work = copy.deepcopy(model).eval()
        # Fold BatchNorm exactly first (the same bytes on every CPU); AIMET's own folding,
        # below, then finds only what torch.fx could not pair here.
        exact_folds = 0
        with contextlib.suppress(StageError):
            work, fold_info = fold_batchnorm(work, engine="torch")
            exact_folds = fold_info["batchnorms_folded"]
        n_out = len(_flatten_outputs(work(*example_t)))
        in_names = _names(input_names, list(example), "input_names")
        default_out = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        out_names = _names(output_names, default_out, "output_names")
        try:
            prepared = prepare_model(work)
        except Exception as e:
            raise StageError(
                f"aimet prepare_model could not trace the model with torch.fx "
                f"({type(e).__name__}: {e}); make forward() free of data-dependent control flow"
            ) from e
        prepared.eval()
        folded = fold_all_batch_norms(prepared, input_shapes=None, dummy_input=example_t)
        sim = QuantizationSimModel(
            prepared,
            dummy_input=example_t,
            # Enum, not the string: some aimet code paths reject the "min_max" alias.
            quant_scheme={
                "tf_enhanced": QuantScheme.post_training_tf_enhanced,
                "min_max": QuantScheme.post_training_tf,
            }[quant_scheme],
            default_output_bw=activations_bw,
            default_param_bw=weights_bw,
            config_file=config_for_aimet,
            in_place=True,
        )

        def _calibrate(sim_model: torch.nn.Module) -> None:
            for sample in calib_t:
                sim_model(*sample)

        sim.compute_encodings(_calibrate)
        qat = None if train is None else _fine_tune(sim.model, model, train,
                                                     train_splits or {}, epochs)
        counts = _count_quantizers(sim.model)

        # Export in a private scratch directory beside dst (aimet writes an intermediate
        # file next to the target and may offload large tensors there), then move into place.
        scratch = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            tmp = scratch / "model.onnx"
            aimet_torch.onnx.export(
                sim.model,
                example_t,
                str(tmp),
                input_names=in_names,
                output_names=out_names,
                opset_version=opset,
                dynamo=False,
            )
            extra = sorted(p.name for p in scratch.iterdir() if p != tmp)
            if extra:
                raise StageError(
                    f"the quantized model for {dst.name} needs external data files {extra} "
                    "(> 2 GB); this is not supported"
                )
            os.replace(tmp, dst)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    if torch.get_num_threads() != threads:  # never leave a changed thread count behind
        torch.set_num_threads(threads)

    qdq = _count_qdq_nodes(dst)
    return {
        "quant_scheme": quant_scheme,
        "weights_bw": weights_bw,
        "activations_bw": activations_bw,
        "config": config_name,
        "config_sha256": config_sha,
        "num_quantizers": counts["param"] + counts["activation"],
        "num_param_quantizers": counts["param"],
        "num_activation_quantizers": counts["activation"],
        "num_folded_batch_norms": exact_folds + len(folded),
        "calibration_samples": len(calib_t),
        "input_names": in_names,
        "output_names": out_names,
        "opset": opset,
        "qdq_nodes": qdq,
        "aimet_version": aimet_torch.__version__,
        "torch_version": torch.__version__,
        **({"qat": qat} if qat is not None else {}),
    }


def _fine_tune(sim_model: torch.nn.Module, float_model: torch.nn.Module,
               train: Callable[..., Any], splits: dict[str, list[dict[str, np.ndarray]]],
               epochs: int) -> dict[str, Any]:
    """Run the user's training callable on the QuantSim model (gradients on, seeded)."""
    import copy
    import inspect

    import torch

    if not isinstance(epochs, int) or epochs < 1:
        raise StageError(f"qat epochs must be a positive integer, not {epochs!r}")
    kwargs: dict[str, Any] = {"epochs": epochs}
    try:
        params = inspect.signature(train).parameters
        if "reference" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                        for p in params.values()):
            kwargs["reference"] = copy.deepcopy(float_model).eval()
    except (TypeError, ValueError):
        pass
    name = getattr(train, "__qualname__", repr(train))
    torch.manual_seed(0)
    sim_model.train()
    try:
        with torch.enable_grad():
            result = train(sim_model, splits, **kwargs)
    except StageError:
        raise
    except Exception as e:
        raise StageError(f"qat train callable {name} failed: {type(e).__name__}: "
                         f"{str(e)[:500]}") from e
    finally:
        sim_model.eval()
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        result = repr(result)[:200]
    return {"epochs": epochs, "splits": {k: len(v) for k, v in sorted(splits.items())},
            "result": result}


def _silence_known_warnings() -> None:
    """Hide the warnings every AIMET run emits and that say nothing about the user's model."""
    for message in (
        r"`torch\.jit\.trace",  # aimet's ConnectedGraph traces with torch.jit
        r"Exporting to ONNX opset version \d+ is not supported",  # aimet converts afterwards
        r"To copy construct from a tensor",
        r"Converting a tensor to a Python boolean",  # aimet's own shape assert during export
        r"You are using the legacy TorchScript-based ONNX export",  # dynamo=False on purpose
    ):
        warnings.filterwarnings("ignore", message=message)


def _count_qdq_nodes(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"),
            "DequantizeLinear": ops.count("DequantizeLinear")}
