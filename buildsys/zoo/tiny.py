"""Tiny models for tests and the example recipe ``recipes/tiny.yaml``.

Importing this module is cheap: torch is imported only when a builder is called (the
``nn.Module`` classes live in :mod:`buildsys.zoo._tiny_modules`).

- :func:`tiny_convnet`: segmentation-like, 1×3×64×64 RGB in [0, 1] → 1×4×64×64 logits
  (conv-BN-ReLU ×3, the second at stride 2, a 1×1 head, nearest ×2 upsample). Fully
  convolutional: any even H×W works.
- :func:`tiny_classifier`: 1×3×H×W RGB in [0, 1] → 1×10 logits (conv-BN-ReLU ×2, global
  average pool, linear).

Weights, BatchNorm affine parameters and BatchNorm running statistics are all drawn from
``seed`` (the same seed gives bit-identical weights; the global torch RNG is not touched).
The running statistics are non-trivial, so folding BatchNorm changes the convolutions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.errors import StageError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["tiny_classifier", "tiny_convnet"]


def _check(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise StageError(f"tiny model {name} must be an integer in [{low}, {high}), "
                         f"got {value!r}")
    return value


def tiny_convnet(seed: int = 0, num_classes: int = 4, width: int = 8) -> nn.Module:
    """Tiny segmentation-like conv net (3,820 parameters with the defaults), eval mode."""
    from buildsys.zoo import _tiny_modules

    return _tiny_modules.build(_tiny_modules.TinyConvNet, _check("seed", seed, 0, 2**63),
                               num_classes=_check("num_classes", num_classes, 1, 4096),
                               width=_check("width", width, 1, 4096))


def tiny_classifier(seed: int = 0, num_classes: int = 10, width: int = 8) -> nn.Module:
    """Tiny image classifier (1,586 parameters with the defaults), eval mode."""
    from buildsys.zoo import _tiny_modules

    return _tiny_modules.build(_tiny_modules.TinyClassifier, _check("seed", seed, 0, 2**63),
                               num_classes=_check("num_classes", num_classes, 1, 4096),
                               width=_check("width", width, 1, 4096))
