"""Tests of buildsys.zoo.ffnet on real torch: figures from the FFNet issue, checkpoint loading,
determinism, the pre-down smoothing and the input normalisation.

Full-size models are only built (cheap) and run on the meta device (shapes and multiply-adds
without compute); real forwards run at small resolutions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from buildsys.errors import StageError
from buildsys.zoo import ffnet

REPO = Path(__file__).resolve().parents[1]

# Figures from the issue / shared notes, kept here independently of ffnet.VARIANTS:
# name -> (trainable params, state-dict keys, native input, native output, G multiply-adds)
FULL_IN, FULL_OUT = (1, 3, 1024, 2048), (1, 19, 128, 256)
LOW_IN, LOW_OUT = (1, 3, 512, 1024), (1, 19, 64, 128)
EXPECTED = {
    "ffnet_40s": (13_911_283, 339, FULL_IN, FULL_OUT, 62.38),
    "ffnet_54s": (18_044_659, 423, FULL_IN, FULL_OUT, 75.70),
    "ffnet_78s": (27_491_059, 567, FULL_IN, FULL_OUT, 96.05),
    "ffnet_78s_lowres": (26_828_435, 562, LOW_IN, LOW_OUT, 19.90),
    "ffnet_122ns_lowres": (32_165_683, 832, LOW_IN, LOW_OUT, 12.74),
}
BUILDERS = {
    "ffnet_40s": ffnet.ffnet_40s,
    "ffnet_54s": ffnet.ffnet_54s,
    "ffnet_78s": ffnet.ffnet_78s,
    "ffnet_78s_lowres": ffnet.ffnet_78s_lowres,
    "ffnet_122ns_lowres": ffnet.ffnet_122ns_lowres,
}
NAMES = list(EXPECTED)
LOWRES = ("ffnet_78s_lowres", "ffnet_122ns_lowres")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Each variant built once with seed 0 (tests must not modify these)."""
    return {name: BUILDERS[name](seed=0) for name in NAMES}


def _rand_image(h: int, w: int, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ API


def test_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys\n"
        "import buildsys.zoo.ffnet as f\n"
        "assert 'torch' not in sys.modules, 'torch imported at module top'\n"
        "print(sorted(f.VARIANTS))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(NAMES))


def test_variants_table_matches_issue() -> None:
    assert list(ffnet.VARIANTS) == NAMES
    for name, (params, keys, shape_in, shape_out, gmacs) in EXPECTED.items():
        v = ffnet.VARIANTS[name]
        assert v.name == name
        assert (v.params, v.state_dict_keys, v.input_shape, v.output_shape, v.gmacs) == (
            params,
            keys,
            shape_in,
            shape_out,
            gmacs,
        )
    ckpt = {n: v.checkpoint for n, v in ffnet.VARIANTS.items()}
    assert ckpt == {
        "ffnet_40s": "ffnet40S_dBBB_cityscapes_state_dict_quarts.pth",
        "ffnet_54s": "ffnet54S_dBBB_cityscapes_state_dict_quarts.pth",
        "ffnet_78s": "ffnet78S_dBBB_cityscapes_state_dict_quarts.pth",
        "ffnet_78s_lowres": "ffnet78S_BCC_cityscapes_state_dict_quarts_pre_down.pth",
        "ffnet_122ns_lowres": "ffnet122NS_CCC_cityscapes_state_dict_quarts_pre_down.pth",
    }
    assert "dBBB" in ffnet.VARIANTS["ffnet_40s"].architecture
    assert "BCC" in ffnet.VARIANTS["ffnet_78s_lowres"].architecture
    assert "CCC" in ffnet.VARIANTS["ffnet_122ns_lowres"].architecture


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, 2**63])
def test_bad_seed_raises(bad: object) -> None:
    with pytest.raises(StageError, match="seed"):
        ffnet.ffnet_40s(seed=bad)  # type: ignore[arg-type]


def test_unknown_variant_raises() -> None:
    with pytest.raises(StageError, match="ffnet_99x"):
        ffnet.build_variant("ffnet_99x")


# ---------------------------------------------------------------------- structure figures


@pytest.mark.parametrize("name", NAMES)
def test_param_and_key_counts(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    params, keys = EXPECTED[name][:2]
    assert sum(p.numel() for p in model.parameters()) == params
    assert all(p.requires_grad for p in model.parameters())
    sd = model.state_dict()
    assert len(sd) == keys
    # The bare network, as in the published checkpoints: nothing under a wrapper prefix.
    assert all(k.startswith(("backbone_model.", "head.", "smoothing.")) for k in sd)
    assert not model.training


@pytest.mark.parametrize("name", NAMES)
def test_published_key_names(models: dict[str, nn.Module], name: str) -> None:
    sd = models[name].state_dict()
    seg_b = not name.endswith("lowres")
    ns = name == "ffnet_122ns_lowres"
    for k in (
        "backbone_model.conv0.weight",
        "backbone_model.bn0.running_var",
        "backbone_model.bn1.num_batches_tracked",
        "backbone_model.layer1.0.conv1.weight",
        "backbone_model.layer2.0.downsample.0.weight",
        "backbone_model.layer2.0.downsample.1.running_mean",
        "backbone_model.layer3.1.bn2.bias",
        "head.layers.0.adapter_conv.3.layers.1.weight",
        "head.layers.3.last_layer.0.bias",
        "head.layers.3.last_layer.1.running_var",
        "head.layers.3.last_layer.3.bias",
    ):
        assert k in sd, k
    for fam in ("fam_32_sm", "fam_32_up", "fam_16_sm", "fam_16_up", "fam_8_sm", "fam_8_up"):
        assert f"head.layers.1.{fam}.layers.0.weight" in sd
        assert f"head.layers.1.{fam}.layers.1.running_mean" in sd
    assert "head.layers.1.fam_4.layers.0.weight" in sd
    assert "head.layers.1.fam_4_up.layers.0.weight" not in sd
    # Only the two segmentation-head convs have a bias.
    conv_biases = [
        name_
        for name_, mod in models[name].named_modules()
        if isinstance(mod, nn.Conv2d) and mod.bias is not None
    ]
    assert conv_biases == ["head.layers.3.last_layer.0", "head.layers.3.last_layer.3"]

    assert ("backbone_model.conv2.weight" in sd) == ns
    assert ("backbone_model.layer4.0.conv1.weight" in sd) == (not ns)
    assert ("smoothing.weight" in sd) == (name in LOWRES)
    # 78S BCC: stage 1 keeps stride 1 and 64 channels, so no shortcut conv there.
    has_l1_down = "backbone_model.layer1.0.downsample.0.weight" in sd
    assert has_l1_down == (name != "ffnet_78s_lowres")

    shape = {k: tuple(v.shape) for k, v in sd.items()}
    if seg_b:
        assert shape["head.layers.3.last_layer.0.weight"] == (256, 288, 3, 3)
        assert shape["head.layers.3.last_layer.3.weight"] == (19, 256, 3, 3)
        assert shape["head.layers.1.fam_4.layers.0.weight"] == (96, 64, 3, 3)
        assert shape["head.layers.1.fam_32_sm.layers.0.weight"] == (32, 256, 3, 3)
        assert shape["head.layers.1.fam_32_up.layers.0.weight"] == (128, 256, 1, 1)
        assert shape["head.layers.1.fam_8_up.layers.0.weight"] == (64, 128, 1, 1)
        assert shape["backbone_model.conv0.weight"] == (32, 3, 3, 3)
        assert shape["head.layers.0.adapter_conv.3.layers.0.weight"] == (256, 320, 1, 1)
    else:
        assert shape["head.layers.3.last_layer.0.weight"] == (128, 176, 3, 3)
        assert shape["head.layers.3.last_layer.3.weight"] == (19, 128, 1, 1)
        assert shape["head.layers.1.fam_4.layers.0.weight"] == (128, 128, 3, 3)
        assert shape["head.layers.1.fam_16_sm.layers.0.weight"] == (16, 128, 3, 3)
        assert shape["smoothing.weight"] == (3, 1, 5, 5)
    if ns:
        assert shape["backbone_model.conv0.weight"] == (64, 3, 3, 3)
        assert shape["head.layers.0.adapter_conv.0.layers.0.weight"] == (128, 64, 1, 1)
        assert shape["head.layers.0.adapter_conv.3.layers.0.weight"] == (128, 256, 1, 1)


def _count_macs(model: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], int]:
    """Output shape and torchinfo-style multiply-adds (conv weights+biases × output pixels,
    BN affine × batch), counted with forward hooks."""
    total = 0

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        n, _, h, w = out.shape
        if isinstance(mod, nn.Conv2d):
            total += sum(p.numel() for p in mod.parameters()) * n * h * w
        else:
            total += sum(p.numel() for p in mod.parameters()) * n

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return tuple(y.shape), total


@pytest.mark.parametrize("name", NAMES)
def test_native_output_shape_and_macs_on_meta(name: str) -> None:
    """Native 1024×2048 (512×1024 lowres) run on the meta device: shapes only, no compute."""
    _, _, shape_in, shape_out, gmacs = EXPECTED[name]
    model = BUILDERS[name](seed=0).to("meta")
    shape, macs = _count_macs(model, torch.empty(shape_in, device="meta"))
    assert shape == shape_out
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.005)


# --------------------------------------------------------------------------- real forwards


@pytest.mark.parametrize("name", NAMES)
def test_small_resolution_forward(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    for h, w in ((64, 128), (128, 256)):
        with torch.no_grad():
            y = model(_rand_image(h, w))
        assert y.shape == (1, 19, h // 8, w // 8)
        assert y.dtype == torch.float32
        assert torch.isfinite(y).all()
        assert float(y.std()) > 0  # raw logits, not a constant map


def test_normalisation_inside_and_without_keys(models: dict[str, nn.Module]) -> None:
    model = models["ffnet_40s"]
    sd = model.state_dict()
    assert len(sd) == 339
    assert not any("mean" in k and "running" not in k for k in sd)
    x = _rand_image(64, 128)  # RGB in [0, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        y = model(x)
        ref = model.head(model.backbone_model((x - mean) / std))
        unnormalised = model.head(model.backbone_model(x))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, unnormalised, atol=1e-3)


def _up2(t: torch.Tensor) -> torch.Tensor:
    """Nearest ×2 upsampling, written independently of F.interpolate."""
    return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@pytest.mark.parametrize("name", ["ffnet_40s", "ffnet_122ns_lowres"])
def test_head_wiring(models: dict[str, nn.Module], name: str) -> None:
    """Up-branch: `sm` and `up` both read the merged feature, the `up` output is nearest-
    upsampled and added to the next shallower adapted feature; concat order fine → coarse."""
    model = models[name]
    head = model.head.layers
    seen_in: dict[str, torch.Tensor] = {}
    seen_out: dict[str, torch.Tensor] = {}

    def keep(key: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, inp: tuple, out: object) -> None:
            seen_in[key] = inp[0]
            seen_out[key] = out  # type: ignore[assignment]

        return hook

    watched = {"adapters": head[0], "cat": head[2], "seg": head[3]}
    for fam in ("32_sm", "32_up", "16_sm", "16_up", "8_sm", "8_up", "4"):
        watched[fam] = getattr(head[1], f"fam_{fam}")
    handles = [m.register_forward_hook(keep(k)) for k, m in watched.items()]
    try:
        with torch.no_grad():
            y = model(_rand_image(128, 256))
    finally:
        for h in handles:
            h.remove()
    a4, a8, a16, a32 = seen_out["adapters"]
    assert a4.shape[-2:] == (16, 32) and a32.shape[-2:] == (2, 4)  # branches at 1/8 .. 1/64
    assert torch.equal(seen_in["32_sm"], a32) and torch.equal(seen_in["32_up"], a32)
    merged16 = _up2(seen_out["32_up"]) + a16
    assert torch.equal(seen_in["16_sm"], merged16) and torch.equal(seen_in["16_up"], merged16)
    merged8 = _up2(seen_out["16_up"]) + a8
    assert torch.equal(seen_in["8_sm"], merged8) and torch.equal(seen_in["8_up"], merged8)
    assert torch.equal(seen_in["4"], _up2(seen_out["8_up"]) + a4)
    cat = seen_out["cat"]
    parts = [seen_out["4"], seen_out["8_sm"], seen_out["16_sm"], seen_out["32_sm"]]
    want = torch.cat([p.repeat_interleave(2**i, 2).repeat_interleave(2**i, 3)
                      for i, p in enumerate(parts)], dim=1)
    assert torch.equal(cat, want)
    assert torch.equal(seen_in["seg"], cat) and torch.equal(seen_out["seg"], y)


# ------------------------------------------------------------------------------ smoothing


@pytest.mark.parametrize("name", LOWRES)
def test_smoothing_kernel_is_scipy_gaussian_buffer(models: dict[str, nn.Module], name: str) -> None:
    from scipy import ndimage

    model = models[name]
    delta = np.zeros((5, 5), dtype=np.float32)
    delta[2, 2] = 1.0
    ref = ndimage.gaussian_filter(delta, sigma=0.7)  # defaults: truncate 4.0, mode reflect
    weight = model.state_dict()["smoothing.weight"]
    assert weight.shape == (3, 1, 5, 5) and weight.dtype == torch.float32
    for c in range(3):
        np.testing.assert_array_equal(weight[c, 0].numpy(), ref)
    # Not a plain normalised 5-tap Gaussian: the separable taps from the shared notes.
    taps = np.array([0.0096775, 0.2053997, 0.5698458, 0.2053997, 0.0096775])
    np.testing.assert_allclose(weight[0, 0].numpy(), np.outer(taps, taps), atol=2e-7)
    plain = np.exp(-0.5 * (np.arange(-2, 3) / 0.7) ** 2)
    plain /= plain.sum()
    assert np.abs(np.outer(plain, plain) - weight[0, 0].numpy()).max() > 1e-5
    # A persistent buffer, not a parameter.
    assert "smoothing.weight" in dict(model.named_buffers())
    assert all(not n.startswith("smoothing") for n, _ in model.named_parameters())


def test_smoothing_pads_height_and_strides(models: dict[str, nn.Module]) -> None:
    model = models["ffnet_78s_lowres"]
    x = _rand_image(64, 128)
    with torch.no_grad():
        y = model.smoothing(x)
    assert y.shape == (1, 3, 31, 62)  # (64+2-5)//2+1, (128-5)//2+1
    k = model.smoothing.weight
    ref = F.conv2d(F.pad(x, (0, 0, 1, 1), mode="reflect"), k, stride=2, groups=3)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    # depthwise: channel 0 of the output only sees channel 0 of the input
    x2 = x.clone()
    x2[:, 1:] = 0
    with torch.no_grad():
        assert torch.equal(model.smoothing(x2)[:, 0], y[:, 0])


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_other_seed_differs(models: dict[str, nn.Module]) -> None:
    rng_before = torch.get_rng_state()
    again = ffnet.ffnet_40s(seed=0)
    other = ffnet.ffnet_40s(seed=1)
    assert torch.equal(rng_before, torch.get_rng_state()), "global RNG state was changed"
    _assert_same_state(models["ffnet_40s"].state_dict(), again.state_dict())
    sd0, sd1 = models["ffnet_40s"].state_dict(), other.state_dict()
    differing = [k for k in sd0 if not torch.equal(sd0[k], sd1[k])]
    floats = [k for k in sd0 if sd0[k].is_floating_point()]
    assert differing == floats  # every float tensor is seeded; counters are not


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["ffnet_40s", "ffnet_78s_lowres"])
def test_checkpoint_round_trip(models: dict[str, nn.Module], tmp_path: Path, name: str) -> None:
    src = models[name]
    path = tmp_path / ffnet.VARIANTS[name].checkpoint
    torch.save(src.state_dict(), path)
    dst = BUILDERS[name](seed=7)
    x = _rand_image(64, 128)
    with torch.no_grad():
        want = src(x)
        assert not torch.allclose(dst(x), want)
        assert ffnet.load_checkpoint(dst, path) is dst
        got = dst(x)
    assert torch.equal(got, want)
    _assert_same_state(src.state_dict(), dst.state_dict())
    assert not dst.training


def test_checkpoint_without_num_batches_tracked_and_module_prefix(
    models: dict[str, nn.Module], tmp_path: Path
) -> None:
    src = models["ffnet_78s_lowres"]
    sd = {
        f"module.{k}": v for k, v in src.state_dict().items() if "num_batches_tracked" not in k
    }
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in src.modules())
    assert len(sd) == 562 - n_bn
    path = tmp_path / "no_nbt.pth"
    torch.save(sd, path)
    dst = ffnet.ffnet_78s_lowres(seed=5)
    ffnet.load_checkpoint(dst, path)
    got = dst.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(got[k], v), k


def _save_modified(src: nn.Module, path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    sd = dict(src.state_dict())
    edit(sd)
    torch.save(sd, path)
    return path


def test_checkpoint_wrong_shape_raises(models: dict[str, nn.Module], tmp_path: Path) -> None:
    key = "head.layers.3.last_layer.3.weight"

    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd[key] = torch.zeros(21, 256, 3, 3)  # 21 classes instead of 19

    path = _save_modified(models["ffnet_40s"], tmp_path / "wrong_shape.pth", edit)
    dst = ffnet.ffnet_40s(seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(StageError) as err:
        ffnet.load_checkpoint(dst, path)
    msg = str(err.value)
    assert key in msg and "wrong_shape.pth" in msg and "(21, 256, 3, 3)" in msg
    _assert_same_state(before, dst.state_dict())  # nothing half-loaded


def test_checkpoint_missing_and_unexpected_keys_raise(
    models: dict[str, nn.Module], tmp_path: Path
) -> None:
    gone = "backbone_model.layer2.0.downsample.0.weight"

    def drop(sd: dict[str, torch.Tensor]) -> None:
        del sd[gone]

    path = _save_modified(models["ffnet_40s"], tmp_path / "missing.pth", drop)
    with pytest.raises(StageError, match="missing keys") as err:
        ffnet.load_checkpoint(ffnet.ffnet_40s(seed=1), path)
    assert gone in str(err.value) and "missing.pth" in str(err.value)

    # A lowres checkpoint into a full-size model: smoothing.weight is unexpected.
    path = tmp_path / "lowres.pth"
    torch.save(models["ffnet_78s_lowres"].state_dict(), path)
    with pytest.raises(StageError) as err:
        ffnet.load_checkpoint(ffnet.ffnet_78s(seed=1), path)
    msg = str(err.value)
    assert "unexpected keys" in msg and "smoothing.weight" in msg
    assert "shape mismatches" in msg and "lowres.pth" in msg


def test_checkpoint_unreadable_files_raise(tmp_path: Path) -> None:
    model = ffnet.ffnet_78s_lowres(seed=0)
    with pytest.raises(StageError, match="does not exist"):
        ffnet.load_checkpoint(model, tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(StageError, match=r"garbage\.pth"):
        ffnet.load_checkpoint(model, garbage)
    not_sd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_sd)
    with pytest.raises(StageError, match="not a state dict"):
        ffnet.load_checkpoint(model, not_sd)
