"""torch modules of the FFNet segmentation family (imports torch: load only from a builder).

The public entry point is :mod:`buildsys.zoo.ffnet`; this module holds the ``nn.Module`` classes
and the deterministic initialisation. Module and attribute names follow the published FFNet
checkpoints (Qualcomm-AI-research/FFNet), so their state dicts load strictly:

- ``backbone_model.conv0/bn0/conv1/bn1[/conv2/bn2]`` (stem),
  ``backbone_model.layerN.i.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``;
- ``head.layers.0.adapter_conv.{0..3}.layers.{0,1}`` (adapters),
  ``head.layers.1.{fam_32_sm,fam_32_up,fam_16_sm,fam_16_up,fam_8_sm,fam_8_up,fam_4}.layers.{0,1}``
  (up-branch), ``head.layers.2`` (upsample + concat, no parameters),
  ``head.layers.3.last_layer.{0,1,3}`` (segmentation head);
- ``smoothing.weight`` (persistent buffer) for the ``*_pre_down`` variants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_MOMENTUM = 0.1
SMOOTHING_SIGMA = 0.7
SMOOTHING_SIZE = 5


# --------------------------------------------------------------------------------------------
# Architecture descriptions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """A ResNet-S / ResNet-NS backbone.

    ``stem`` lists (out_channels, stride) of the 3×3 stem convs (input 3 channels). When
    ``stem_branch`` is true the last stem conv's output is the finest head branch (ResNet-NS,
    three stages); otherwise the branches are the outputs of the stages (ResNet-S, four stages).
    """

    stem: tuple[tuple[int, int], ...]
    channels: tuple[int, ...]
    blocks: tuple[int, ...]
    strides: tuple[int, ...]
    stem_branch: bool


@dataclass(frozen=True)
class HeadConfig:
    """An FFNet up-head: adapter widths, up-branch widths (fine → coarse), seg-head type."""

    adapter: tuple[int, int, int, int]
    up: tuple[int, int, int, int]
    seg: str  # "B": 3×3 conv → BN → ReLU → 3×3 conv; "C": 3×3 conv → BN → ReLU → 1×1 conv
    seg_mid: int


@dataclass(frozen=True)
class FFNetConfig:
    backbone: BackboneConfig
    head: HeadConfig
    pre_down: bool


_STEM_S = ((32, 2), (64, 2))
_STEM_NS = ((64, 2), (64, 2), (64, 1))
_S_CHANNELS = (64, 128, 192, 320)

HEAD_B = HeadConfig(adapter=(64, 128, 128, 256), up=(96, 96, 64, 32), seg="B", seg_mid=256)
HEAD_C = HeadConfig(adapter=(128, 128, 128, 128), up=(128, 16, 16, 16), seg="C", seg_mid=128)

CONFIGS: dict[str, FFNetConfig] = {
    "ffnet_40s": FFNetConfig(
        BackboneConfig(_STEM_S, _S_CHANNELS, (4, 5, 6, 4), (2, 2, 2, 2), stem_branch=False),
        HEAD_B,
        pre_down=False,
    ),
    "ffnet_54s": FFNetConfig(
        BackboneConfig(_STEM_S, _S_CHANNELS, (5, 8, 8, 5), (2, 2, 2, 2), stem_branch=False),
        HEAD_B,
        pre_down=False,
    ),
    "ffnet_78s": FFNetConfig(
        BackboneConfig(_STEM_S, _S_CHANNELS, (6, 12, 12, 8), (2, 2, 2, 2), stem_branch=False),
        HEAD_B,
        pre_down=False,
    ),
    "ffnet_78s_lowres": FFNetConfig(
        BackboneConfig(_STEM_S, _S_CHANNELS, (6, 12, 12, 8), (1, 2, 2, 2), stem_branch=False),
        HEAD_C,
        pre_down=True,
    ),
    "ffnet_122ns_lowres": FFNetConfig(
        BackboneConfig(_STEM_NS, (64, 128, 256), (16, 24, 20), (2, 2, 2), stem_branch=True),
        HEAD_C,
        pre_down=True,
    ),
}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mobile upsampling: nearest, to ``ref``'s spatial size (not by a scale factor)."""
    return F.interpolate(x, size=(ref.shape[-2], ref.shape[-1]), mode="nearest")


class ConvBNReLU(nn.Module):
    """k×k conv (no bias, 'same' padding) → BN → ReLU; keys ``layers.{0,1}``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BasicBlock(nn.Module):
    """ResNet basic block; 1×1 conv + BN shortcut when the stride or the width changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class Backbone(nn.Module):
    """ResNet-S (4 stages) or ResNet-NS (3 stages + stem branch); returns 4 features, fine first."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self._n_stem = len(cfg.stem)
        self._n_stages = len(cfg.channels)
        self._stem_branch = cfg.stem_branch
        in_ch = 3
        for i, (out_ch, stride) in enumerate(cfg.stem):
            self.add_module(
                f"conv{i}", nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
            )
            self.add_module(f"bn{i}", nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM))
            self.add_module(f"relu{i}", nn.ReLU())
            in_ch = out_ch
        self.out_channels: list[int] = [in_ch] if cfg.stem_branch else []
        for s, (out_ch, n_blocks, stride) in enumerate(
            zip(cfg.channels, cfg.blocks, cfg.strides, strict=True), start=1
        ):
            blocks = [BasicBlock(in_ch, out_ch, stride)]
            blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
            self.out_channels.append(out_ch)
            in_ch = out_ch
        if len(self.out_channels) != 4:
            raise ValueError(f"the FFNet head needs 4 branches, got {self.out_channels}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        for i in range(self._n_stem):
            x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        feats = [x] if self._stem_branch else []
        for s in range(1, self._n_stages + 1):
            x = getattr(self, f"layer{s}")(x)
            feats.append(x)
        return feats


class AdapterConv(nn.Module):
    """One 1×1 ConvBNReLU per branch, finest first; keys ``adapter_conv.{0..3}``."""

    def __init__(self, in_chs: Sequence[int], out_chs: Sequence[int]) -> None:
        super().__init__()
        self.adapter_conv = nn.ModuleList(
            ConvBNReLU(i, o, 1) for i, o in zip(in_chs, out_chs, strict=True)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.adapter_conv, feats, strict=True)]


class UpBranch(nn.Module):
    """FPN-style top-down branch.

    ``in_chs`` are the adapter widths and ``out_chs`` the branch widths, both fine → coarse.
    At each level the merged feature feeds a 3×3 ``sm`` conv (the branch output) and a 1×1
    ``up`` conv to the next shallower adapter's width, which is upsampled and added to it.
    """

    def __init__(self, in_chs: Sequence[int], out_chs: Sequence[int]) -> None:
        super().__init__()
        c4, c8, c16, c32 = in_chs
        o4, o8, o16, o32 = out_chs
        self.fam_32_sm = ConvBNReLU(c32, o32, 3)
        self.fam_32_up = ConvBNReLU(c32, c16, 1)
        self.fam_16_sm = ConvBNReLU(c16, o16, 3)
        self.fam_16_up = ConvBNReLU(c16, c8, 1)
        self.fam_8_sm = ConvBNReLU(c8, o8, 3)
        self.fam_8_up = ConvBNReLU(c8, c4, 1)
        self.fam_4 = ConvBNReLU(c4, o4, 3)
        self.out_channels = sum(out_chs)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        f4, f8, f16, f32 = feats
        sm32 = self.fam_32_sm(f32)
        x = _upsample_to(self.fam_32_up(f32), f16) + f16
        sm16 = self.fam_16_sm(x)
        x = _upsample_to(self.fam_16_up(x), f8) + f8
        sm8 = self.fam_8_sm(x)
        x = _upsample_to(self.fam_8_up(x), f4) + f4
        sm4 = self.fam_4(x)
        return [sm4, sm8, sm16, sm32]


class UpsampleCat(nn.Module):
    """Upsample every branch to the finest one's size (nearest) and concatenate, finest first."""

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        first = feats[0]
        return torch.cat([first, *(_upsample_to(f, first) for f in feats[1:])], dim=1)


class SegHead(nn.Module):
    """3×3 conv(bias) → BN → ReLU → conv(bias) to the classes: 3×3 for "B", 1×1 for "C"."""

    def __init__(self, in_ch: int, mid_ch: int, kind: str, num_classes: int) -> None:
        super().__init__()
        k_last = {"B": 3, "C": 1}[kind]
        self.last_layer = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=True),
            nn.BatchNorm2d(mid_ch, momentum=BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(mid_ch, num_classes, k_last, padding=k_last // 2, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(x)


class Head(nn.Module):
    """``layers`` = [adapters, up-branch, upsample-and-concat, segmentation head]."""

    def __init__(self, in_chs: Sequence[int], cfg: HeadConfig, num_classes: int) -> None:
        super().__init__()
        up = UpBranch(cfg.adapter, cfg.up)
        self.layers = nn.Sequential(
            AdapterConv(in_chs, cfg.adapter),
            up,
            UpsampleCat(),
            SegHead(up.out_channels, cfg.seg_mid, cfg.seg, num_classes),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(feats)


def gaussian_kernel_1d(sigma: float = SMOOTHING_SIGMA, size: int = SMOOTHING_SIZE) -> np.ndarray:
    """What ``scipy.ndimage.gaussian_filter1d`` makes of a centred delta of length ``size``.

    scipy's defaults: a normalised Gaussian truncated at 4σ (radius ``int(4σ + 0.5)``), and
    ``mode="reflect"`` (half-sample symmetric), so taps falling outside fold back in. Computed
    in float64.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps /= taps.sum()
    out = np.zeros(size, dtype=np.float64)
    centre = (size - 1) // 2
    for j in range(size):
        for t, w in zip(offsets.astype(int), taps, strict=True):
            k = j + t  # correlation: out[j] = sum_t w[t] * in[j + t]
            while k < 0 or k >= size:  # half-sample symmetric reflection
                k = -k - 1 if k < 0 else 2 * size - k - 1
            if k == centre:
                out[j] += w
    return out


def gaussian_kernel_2d(sigma: float = SMOOTHING_SIGMA, size: int = SMOOTHING_SIZE) -> np.ndarray:
    """The float32 ``size×size`` kernel ``gaussian_filter`` makes of a float32 centred delta.

    scipy filters axis 0 then axis 1, storing the intermediate in the input's dtype (float32);
    we mirror that so the kernel matches the published ``smoothing.weight`` bit for bit.
    """
    k = gaussian_kernel_1d(sigma, size)
    first = k.astype(np.float32).astype(np.float64)  # axis-0 pass, rounded to float32
    return np.outer(first, k).astype(np.float32)


class GaussianSmoothing(nn.Module):
    """Fixed depthwise Gaussian blur with stride 2; its kernel is the persistent buffer ``weight``.

    The input's height is reflect-padded by one row on top and one at the bottom first (width
    unpadded), then the 5×5 conv runs without padding: 512×1024 → 514×1024 → 255×510.
    """

    weight: torch.Tensor

    def __init__(self, channels: int = 3, stride: int = 2) -> None:
        super().__init__()
        kernel = torch.from_numpy(gaussian_kernel_2d())
        self.register_buffer(
            "weight", kernel.view(1, 1, *kernel.shape).repeat(channels, 1, 1, 1).contiguous()
        )
        self.channels = channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 1, 1), mode="reflect")
        return F.conv2d(x, self.weight, stride=self.stride, groups=self.channels)


class FFNet(nn.Module):
    """An FFNet segmentation network taking RGB in [0, 1] and returning raw logits at 1/8 size.

    The ImageNet mean/std normalisation lives in non-persistent buffers, so the state dict is
    exactly the published checkpoint's (``backbone_model.``, ``head.``, ``smoothing.weight``).
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, cfg: FFNetConfig, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.register_buffer(
            "input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self.pre_down = cfg.pre_down
        if cfg.pre_down:
            self.smoothing = GaussianSmoothing(channels=3, stride=2)
        self.backbone_model = Backbone(cfg.backbone)
        self.head = Head(self.backbone_model.out_channels, cfg.head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std
        if self.pre_down:
            x = self.smoothing(x)
        return self.head(self.backbone_model(x))


# --------------------------------------------------------------------------------------------
# Deterministic initialisation
# --------------------------------------------------------------------------------------------


def _init_weights(model: FFNet, gen: torch.Generator) -> None:
    """Seeded initialisation, a pure function of the generator's seed (modules in fixed order).

    - convs: Kaiming normal (fan_out, ReLU gain); the two seg-head biases ~ U(-0.1, 0.1);
    - BatchNorm: γ ~ U(0.8, 1.2), β ~ N(0, 0.05²), running mean ~ N(0, 0.05²), running var
      ~ U(0.8, 1.2), so folded biases are non-zero and state dicts differ between seeds; the γ
      of each residual block's last BN is divided by √(number of blocks) so the activations
      stay O(1) through the deep backbone (eval-mode BN with random statistics does not
      renormalise them);
    - the smoothing kernel and the normalisation constants are fixed, not random.
    """
    residual_bns = {id(m.bn2) for m in model.modules() if isinstance(m, BasicBlock)}
    res_scale = 1.0 / math.sqrt(max(1, len(residual_bns)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.8, 1.2, generator=gen)
                if id(m) in residual_bns:
                    m.weight.mul_(res_scale)
                m.bias.normal_(0.0, 0.05, generator=gen)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.05, generator=gen)
                m.running_var.uniform_(0.8, 1.2, generator=gen)
                if m.num_batches_tracked is not None:
                    m.num_batches_tracked.zero_()


def build(name: str, seed: int) -> FFNet:
    """Build variant ``name`` with weights initialised from ``seed``, in eval mode, on the CPU.

    The global torch RNG state is left untouched (construction runs inside ``fork_rng``; the
    initialisation draws from a local generator).
    """
    cfg = CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        model = FFNet(cfg)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    _init_weights(model, gen)
    return model.eval()
