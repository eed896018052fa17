"""The tiny zoo models: shapes, seeded determinism, untouched global RNG, non-trivial BN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from buildsys.errors import StageError
from buildsys.zoo.tiny import tiny_classifier, tiny_convnet

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_zoo_does_not_import_torch() -> None:
    code = "import sys, buildsys.zoo.tiny; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False"


def test_shapes_and_eval_mode() -> None:
    net, clf = tiny_convnet(0), tiny_classifier(0)
    assert not net.training and not clf.training
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)
        assert net(torch.rand(2, 3, 32, 48)).shape == (2, 4, 32, 48)
        assert clf(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    assert tiny_convnet(0, num_classes=7)(torch.rand(1, 3, 16, 16)).shape == (1, 7, 16, 16)


@pytest.mark.parametrize("builder", [tiny_convnet, tiny_classifier])
def test_same_seed_same_weights_other_seed_other_weights(builder) -> None:
    a, b, c = builder(3).state_dict(), builder(3).state_dict(), builder(4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    floats = [k for k in a if a[k].is_floating_point()]
    assert all(not torch.equal(a[k], c[k]) for k in floats)


def test_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    tiny_convnet(5)
    tiny_classifier(5)
    assert torch.equal(before, torch.get_rng_state())


def test_batchnorm_statistics_are_not_the_defaults() -> None:
    bns = [m for m in tiny_convnet(0).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3
    for bn in bns:
        assert bn.running_mean.abs().min() > 0
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert bn.bias.abs().min() > 0


def test_bn_in_eval_changes_the_output() -> None:
    """The statistics matter: with default stats the output would differ."""
    net = tiny_convnet(0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
        assert (net(x) - y).abs().max() > 1e-2


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed) -> None:
    with pytest.raises(StageError, match="seed"):
        tiny_convnet(seed)
