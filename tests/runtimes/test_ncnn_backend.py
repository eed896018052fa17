"""The NCNN backend on a real conversion: bad input shapes and damaged files are clear errors
naming what is wrong, never a crash or garbage outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from buildsys.backends import ncnn
from buildsys.errors import StageError

pytestmark = pytest.mark.skipif(not ncnn.is_available(), reason="needs the ncnn extra")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from buildsys.zoo.tiny import tiny_convnet

    out = tmp_path_factory.mktemp("ncnn")
    info = ncnn.convert(tiny_convnet(seed=0), {"image": np.zeros((1, 3, 16, 16), np.float32)},
                        out, out / "work", fp16=False)
    assert info["batchnorms_folded"] == 3 and info["weights_storage"] == "fp32"
    return out / ncnn.PARAM, out / ncnn.BIN


def test_runs_are_repeatable_and_keep_the_batch_axis(converted: tuple[Path, Path]) -> None:
    sample = {"image": np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)}
    first, _ = ncnn.run(*converted, [sample, sample])
    assert first[0]["out0"].shape == (1, 4, 16, 16)
    assert np.array_equal(first[0]["out0"], first[1]["out0"])  # a fresh extractor per run


def test_batch_above_one_is_refused_with_the_input_name(converted: tuple[Path, Path]) -> None:
    with pytest.raises(StageError, match="input 'image' has shape \\[2, 3, 16, 16\\]: NCNN runs "
                                         "batch 1 only"):
        ncnn.run(*converted, [{"image": np.zeros((2, 3, 16, 16), np.float32)}])


def test_a_truncated_bin_is_an_error_naming_it(converted: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    param, weights = converted
    short = tmp_path / "short.bin"
    short.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(StageError, match=r"cannot load the weights .*short\.bin"):
        ncnn.run(param, short, [])
    with pytest.raises(StageError, match="does not exist"):
        ncnn.run(param, tmp_path / "missing.bin", [])
