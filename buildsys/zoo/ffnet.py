"""FFNet segmentation models (Cityscapes, 19 classes): our own PyTorch implementation.

Importing this module is cheap: torch is imported only when a builder or
:func:`load_checkpoint` is called (the ``nn.Module`` classes live in
:mod:`buildsys.zoo._ffnet_modules`).

Every model takes RGB in [0, 1] as N×3×H×W float32, normalises it with the ImageNet mean/std
inside (no state-dict keys for that) and returns raw logits N×19×(H/8)×(W/8). The state dict
matches the published checkpoints (Qualcomm-AI-research/FFNet), so ``load_checkpoint`` loads
them strictly.

Input sizes: the networks are fully convolutional, so the same module (same weights) runs at
other resolutions; every stride-2 step rounds up and the head resizes each branch to the next
one's size, so any H×W gives ceil(H/8)×ceil(W/8) logits. The deepest feature is at stride 64
for every variant (the lowres ones: 2 from the pre-down smoothing × 32), so keep H and W
multiples of 64 -- e.g. 64×128, 128×256 (the tests' sizes), 256×512 -- to get exactly
(H/8)×(W/8) with every branch on the same grid as at the native size. The lowres variants also
need H ≥ 2 and W ≥ 5 for the pre-down smoothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buildsys.errors import StageError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "VARIANTS",
    "VariantInfo",
    "build_variant",
    "ffnet_40s",
    "ffnet_54s",
    "ffnet_78s",
    "ffnet_78s_lowres",
    "ffnet_122ns_lowres",
    "load_checkpoint",
]


@dataclass(frozen=True)
class VariantInfo:
    """What a variant is and the figures our implementation must reproduce."""

    name: str
    architecture: str  # the published model name
    params: int  # trainable parameters (the smoothing buffer excluded)
    state_dict_keys: int  # with BN running stats and num_batches_tracked
    input_shape: tuple[int, int, int, int]  # native N, C, H, W (RGB in [0, 1])
    output_shape: tuple[int, int, int, int]  # N, 19, H/8, W/8 (raw logits)
    gmacs: float  # multiply-adds at the native size, in G (torchinfo's count)
    checkpoint: str  # file name of the published state dict


_FULL_IN = (1, 3, 1024, 2048)
_FULL_OUT = (1, 19, 128, 256)
_LOW_IN = (1, 3, 512, 1024)
_LOW_OUT = (1, 19, 64, 128)

VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo(
            "ffnet_40s",
            "ffnet40S_dBBB_mobile",
            13_911_283,
            339,
            _FULL_IN,
            _FULL_OUT,
            62.38,
            "ffnet40S_dBBB_cityscapes_state_dict_quarts.pth",
        ),
        VariantInfo(
            "ffnet_54s",
            "ffnet54S_dBBB_mobile",
            18_044_659,
            423,
            _FULL_IN,
            _FULL_OUT,
            75.70,
            "ffnet54S_dBBB_cityscapes_state_dict_quarts.pth",
        ),
        VariantInfo(
            "ffnet_78s",
            "ffnet78S_dBBB_mobile",
            27_491_059,
            567,
            _FULL_IN,
            _FULL_OUT,
            96.05,
            "ffnet78S_dBBB_cityscapes_state_dict_quarts.pth",
        ),
        VariantInfo(
            "ffnet_78s_lowres",
            "ffnet78S_BCC_mobile_pre_down",
            26_828_435,
            562,
            _LOW_IN,
            _LOW_OUT,
            19.90,
            "ffnet78S_BCC_cityscapes_state_dict_quarts_pre_down.pth",
        ),
        VariantInfo(
            "ffnet_122ns_lowres",
            "ffnet122NS_CCC_mobile_pre_down",
            32_165_683,
            832,
            _LOW_IN,
            _LOW_OUT,
            12.74,
            "ffnet122NS_CCC_cityscapes_state_dict_quarts_pre_down.pth",
        ),
    )
}


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise StageError(f"FFNet seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def build_variant(name: str, seed: int = 0) -> nn.Module:
    """Build FFNet variant ``name`` (a key of ``VARIANTS``), initialised from ``seed``, in eval
    mode. The global torch RNG state is not touched."""
    if name not in VARIANTS:
        raise StageError(f"unknown FFNet variant {name!r}; known: {', '.join(VARIANTS)}")
    from buildsys.zoo import _ffnet_modules

    return _ffnet_modules.build(name, _check_seed(seed))


def ffnet_40s(seed: int = 0) -> nn.Module:
    """FFNet-40S (ResNet-40S dBBB, mobile head): 1×3×1024×2048 → 1×19×128×256."""
    return build_variant("ffnet_40s", seed)


def ffnet_54s(seed: int = 0) -> nn.Module:
    """FFNet-54S (ResNet-54S dBBB, mobile head): 1×3×1024×2048 → 1×19×128×256."""
    return build_variant("ffnet_54s", seed)


def ffnet_78s(seed: int = 0) -> nn.Module:
    """FFNet-78S (ResNet-78S dBBB, mobile head): 1×3×1024×2048 → 1×19×128×256."""
    return build_variant("ffnet_78s", seed)


def ffnet_78s_lowres(seed: int = 0) -> nn.Module:
    """FFNet-78S lowres (78S BCC, mobile head, pre-down): 1×3×512×1024 → 1×19×64×128."""
    return build_variant("ffnet_78s_lowres", seed)


def ffnet_122ns_lowres(seed: int = 0) -> nn.Module:
    """FFNet-122NS lowres (122NS CCC, mobile head, pre-down): 1×3×512×1024 → 1×19×64×128."""
    return build_variant("ffnet_122ns_lowres", seed)


_SHOW = 5  # how many keys of each kind an error message lists


def _listing(kind: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {kind}: {', '.join(items[:_SHOW])}{more}"


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state-dict checkpoint (e.g. a published ``*_state_dict_quarts*.pth``) strictly.

    ``torch.load(weights_only=True)`` on the CPU; a leading ``module.`` (DataParallel) prefix is
    stripped; missing ``num_batches_tracked`` entries are tolerated (the model keeps its own).
    Anything else missing, unexpected or of the wrong shape raises ``StageError`` naming the
    file and the first few offending keys. Returns ``model``.
    """
    import torch

    shown = os.fspath(path)
    try:
        loaded = torch.load(shown, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise StageError(f"FFNet checkpoint {shown} does not exist") from e
    except Exception as e:  # torch.load raises many kinds on a bad file (even IndexError)
        raise StageError(
            f"FFNet checkpoint {shown} could not be read as a weights-only torch state dict "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "give the .pth state dict file of the published model"
        ) from e
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise StageError(
            f"FFNet checkpoint {shown} is not a state dict (a mapping of names to tensors): "
            f"got {type(loaded).__name__}; save it with torch.save(model.state_dict(), path)"
        )

    state = {k.removeprefix("module."): v for k, v in loaded.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    tolerated = [k for k in missing if k.endswith(".num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            _listing(kind, items)
            for kind, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise StageError(
            f"FFNet checkpoint {shown} does not fit the model: " + "; ".join(problems)
            + ". Check that the checkpoint is for this variant (see VARIANTS[...].checkpoint)."
        )
    for k in tolerated:
        state[k] = expected[k]
    model.load_state_dict(state, strict=True)
    return model
