"""torch modules behind :mod:`buildsys.zoo.tiny` (imports torch: load only from a builder)."""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class TinyConvNet(nn.Module):
    """Segmentation-like: N×3×H×W RGB in [0, 1] → N×classes×H×W logits (H, W even).

    Three conv-BN-ReLU blocks (the second one at stride 2), a 1×1 head, nearest ×2 upsample.
    """

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, width),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 2 * width),
        )
        self.head = nn.Conv2d(2 * width, num_classes, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.head(self.features(x)))


class TinyClassifier(nn.Module):
    """N×3×H×W RGB in [0, 1] → N×classes logits: conv-BN-ReLU ×2, global pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, width, stride=2),
            conv_bn_relu(width, 2 * width, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Every parameter and BN statistic drawn from ``gen``, in module order.

    BatchNorm gets non-trivial affine parameters and running statistics, so folding it into
    the convolutions really changes their weights and biases.
    """

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                std = math.sqrt(2.0 / fan_in)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
            elif isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(uniform(shape, 0.5, 1.5))
                module.bias.copy_(uniform(shape, -0.2, 0.2))
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(uniform(shape, -0.3, 0.3))
                module.running_var.copy_(uniform(shape, 0.5, 2.0))
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked.fill_(100)


def build(cls: type[nn.Module], seed: int, **kwargs: int) -> nn.Module:
    """Construct ``cls(**kwargs)`` with weights from ``seed``, in eval mode; the global torch
    RNG state is left untouched (construction in ``fork_rng``, init from a local generator)."""
    with torch.random.fork_rng(devices=[]):
        model = cls(**kwargs)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    _init_weights(model, gen)
    return model.eval()
