"""Datasets from recipe specs: images (generated PNGs), skimage photos, npz/npy, python,
random; disjoint splits, preprocessing, errors, deterministic sample files."""

from __future__ import annotations

import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildsys.data import datasets as ds
from buildsys.errors import StageError

INPUTS = {"image": {"shape": [1, 3, 16, 16], "dtype": "float32"}}


def write_images(root: Path, names: list[str], size: tuple[int, int] = (20, 12),
                 mode: str = "RGB") -> list[Path]:
    """Image i is filled with the value 10 * (i + 1) in every channel (order = `names`)."""
    paths = []
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        value = 10 * (i + 1)
        color = {"RGB": (value,) * 3, "L": value, "RGBA": (value,) * 3 + (128,)}[mode]
        Image.new(mode, size, color).save(path)
        paths.append(path)
    return paths


def ids(samples: list[dict[str, np.ndarray]]) -> list[int]:
    """Recover each sample's fill value (they are constant images)."""
    return [round(float(s["image"].mean()) * 255) for s in samples]


# --- images ----------------------------------------------------------------------------------


def test_image_splits_are_disjoint_and_sorted_by_relative_path(tmp_path: Path) -> None:
    # Sorted by relative path: a/2.png, a/b/1.png, c.png, d/0.png, e.png, f.png
    names = ["d/0.png", "a/b/1.png", "a/2.png", "c.png", "e.png", "f.png"]
    write_images(tmp_path, names)
    value = {n: 10 * (i + 1) for i, n in enumerate(names)}
    order = [value[n] for n in sorted(names)]
    spec = {"images": "**/*.png", "calibration": 3, "validation": 2}
    calibration = ds.load_samples(spec, tmp_path, INPUTS, "calibration", None)
    validation = ds.load_samples(spec, tmp_path, INPUTS, "validation", None)
    assert ids(calibration) == order[:3]
    assert ids(validation) == order[3:5]
    assert not set(ids(calibration)) & set(ids(validation))
    assert ids(ds.load_samples(spec, tmp_path, INPUTS, "calibration", 2)) == order[:2]
    assert ids(ds.load_samples(spec, tmp_path, INPUTS, "validation", 1)) == order[3:4]
    # Only the files ever read are inputs (the 6th image is not).
    files = ds.input_files(spec, tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == sorted(names)[:5]
    for sample in calibration + validation:
        assert sample["image"].shape == (1, 3, 16, 16)
        assert sample["image"].dtype == np.float32


def test_one_count_given_the_other_takes_the_rest(tmp_path: Path) -> None:
    write_images(tmp_path, [f"{i}.png" for i in range(5)])
    spec = {"images": "*.png", "validation": 2}
    assert len(ds.load_samples(spec, tmp_path, INPUTS, "calibration")) == 3
    assert ids(ds.load_samples(spec, tmp_path, INPUTS, "validation")) == [40, 50]
    with pytest.raises(StageError, match="say how many are for calibration and validation"):
        ds.load_samples({"images": "*.png"}, tmp_path, INPUTS, "validation")


def test_files_mode_matches_project_mode(tmp_path: Path) -> None:
    """The build system hashes input_files() and passes them instead of the project dir."""
    write_images(tmp_path, [f"img{i}.png" for i in range(4)])
    spec = {"images": "*.png", "calibration": 2, "validation": 2,
            "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    files = ds.input_files(spec, tmp_path)
    stripped = {k: v for k, v in spec.items() if k != "images"}
    for split in ("calibration", "validation"):
        a = ds.load_samples(spec, tmp_path, INPUTS, split, None)
        b = ds.load_samples(stripped, files, INPUTS, split, None)
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["image"], y["image"])


def test_too_few_images_and_empty_glob(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    spec = {"images": "*.png", "calibration": 2, "validation": 2}
    with pytest.raises(StageError, match=r"'\*\.png' \(3 files\) has 3 samples but the dataset "
                                         r"asks for 2 calibration \+ 2 validation"):
        ds.load_samples(spec, tmp_path, INPUTS, "calibration")
    with pytest.raises(StageError, match=r"has 3 samples"):
        ds.input_files(spec, tmp_path)
    with pytest.raises(StageError, match=r"glob 'photos/\*\.jpg' matches no file"):
        ds.input_files({"images": "photos/*.jpg", "calibration": 1}, tmp_path)
    with pytest.raises(StageError, match=r"3 calibration samples asked for, but the "
                                         r"calibration split .* has 1"):
        ds.load_samples({"images": "*.png", "calibration": 1}, tmp_path, INPUTS,
                        "calibration", 3)


def test_preprocessing_values_layout_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    spec = {"images": "x.png", "calibration": 1,
            "preprocess": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0], "layout": "NHWC"}}
    inputs = {"img": {"shape": [1, 24, 30, 3]}}
    (sample,) = ds.load_samples(spec, tmp_path, inputs, "calibration")
    expected = (pixels.astype(np.float32) / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0]
    np.testing.assert_allclose(sample["img"][0], expected, rtol=1e-6, atol=1e-6)
    # NCHW (default) with a bilinear resize to the input's H×W.
    inputs = {"img": {"shape": [1, 3, 12, 10]}}
    spec = {"images": "x.png", "calibration": 1, "preprocess": {"scale": 1.0}}
    (sample,) = ds.load_samples(spec, tmp_path, inputs, "calibration")
    resized = np.asarray(Image.fromarray(pixels).resize((10, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(sample["img"][0], resized.transpose(2, 0, 1).astype(np.float32))
    with pytest.raises(StageError, match=r"resize \[8, 8\] does not give the input's 12×10"):
        ds.load_samples({**spec, "preprocess": {"resize": [8, 8]}}, tmp_path, inputs,
                        "calibration")
    # uint8 inputs get the raw pixels.
    raw_inputs = {"img": {"shape": [1, 24, 30, 3], "dtype": "uint8"}}
    raw_spec = {"images": "x.png", "calibration": 1, "preprocess": {"layout": "NHWC"}}
    (raw,) = ds.load_samples(raw_spec, tmp_path, raw_inputs, "calibration")
    assert raw["img"].dtype == np.uint8
    np.testing.assert_array_equal(raw["img"][0], pixels)
    with pytest.raises(StageError, match="pixels are passed unscaled, so preprocess scale"):
        ds.load_samples({**raw_spec, "preprocess": {"layout": "NHWC", "scale": 0.5}},
                        tmp_path, raw_inputs, "calibration")


def test_channel_mode_needs_convert(tmp_path: Path) -> None:
    write_images(tmp_path, ["gray.png"], mode="L")
    write_images(tmp_path / "rgba", ["a.png"], mode="RGBA")
    with pytest.raises(StageError, match=r"gray\.png is L, not RGB; add `convert: rgb`"):
        ds.load_samples({"images": "gray.png", "calibration": 1}, tmp_path, INPUTS,
                        "calibration")
    (gray,) = ds.load_samples({"images": "gray.png", "calibration": 1,
                               "preprocess": {"convert": "rgb"}}, tmp_path, INPUTS,
                              "calibration")
    np.testing.assert_allclose(gray["image"], np.full((1, 3, 16, 16), 10 / 255, np.float32))
    with pytest.raises(StageError, match="is RGBA"):
        ds.load_samples({"images": "rgba/*.png", "calibration": 1}, tmp_path, INPUTS,
                        "calibration")
    (rgba,) = ds.load_samples({"images": "rgba/*.png", "calibration": 1,
                               "preprocess": {"convert": "rgb"}}, tmp_path, INPUTS,
                              "calibration")
    assert rgba["image"].shape == (1, 3, 16, 16)


def test_image_dataset_needs_a_single_three_channel_input(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png"])
    spec = {"images": "a.png", "calibration": 1}
    with pytest.raises(StageError, match="single-input models"):
        ds.load_samples(spec, tmp_path, {"a": INPUTS["image"], "b": INPUTS["image"]},
                        "calibration")
    with pytest.raises(StageError, match="3-channel"):
        ds.load_samples(spec, tmp_path, {"x": {"shape": [1, 1, 16, 16]}}, "calibration")


# --- scikit-image photos ---------------------------------------------------------------------


def test_builtin_images_are_on_disk() -> None:
    paths = ds.builtin_images(["astronaut", "coffee.png", "rocket", "motorcycle_left",
                               "chelsea", "camera"])
    assert [p.name for p in paths] == ["astronaut.png", "coffee.png", "rocket.jpg",
                                       "motorcycle_left.png", "chelsea.png", "camera.png"]
    assert all(p.is_file() and p.parent.name == "data" for p in paths)
    with pytest.raises(StageError, match=r"'nope' is not bundled .*astronaut"):
        ds.builtin_images(["nope"])


def test_tiny_recipe_dataset() -> None:
    """The spec of recipes/tiny.yaml: 6 photos (camera is grayscale), 4 + 2."""
    spec = {"skimage": ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left",
                        "camera"], "preprocess": {"convert": "rgb"},
            "calibration": 4, "validation": 2}
    inputs = {"image": {"shape": [1, 3, 64, 64]}}
    calibration = ds.load_samples(spec, Path("."), inputs, "calibration", None)
    validation = ds.load_samples(spec, Path("."), inputs, "validation", None)
    assert len(calibration) == 4 and len(validation) == 2
    everything = [s["image"] for s in calibration + validation]
    assert all(a.min() >= 0 and a.max() <= 1 and a.std() > 0.05 for a in everything)
    assert len({a.tobytes() for a in everything}) == 6
    camera = validation[1]["image"][0]
    np.testing.assert_array_equal(camera[0], camera[1])  # grayscale became R = G = B
    assert [p.name for p in ds.input_files(spec, Path("."))][-1] == "camera.png"
    with pytest.raises(StageError, match=r"camera\.png is L"):
        ds.load_samples({**spec, "preprocess": {}}, Path("."), inputs, "validation", None)


# --- npz / npy / python ----------------------------------------------------------------------


def test_npz_with_and_without_batch_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.random((5, 1, 3, 16, 16), dtype=np.float32)
    b = rng.random((5, 4), dtype=np.float64)  # batch axis left out, float64 → float32
    np.savez(tmp_path / "d.npz", a=a, b=b, labels=np.arange(5))
    inputs = {"a": {"shape": [1, 3, 16, 16]}, "b": {"shape": [1, 4]}}
    spec = {"npz": "d.npz", "calibration": 3, "validation": 2}
    calibration = ds.load_samples(spec, tmp_path, inputs, "calibration")
    validation = ds.load_samples(spec, tmp_path, inputs, "validation")
    assert len(calibration) == 3 and len(validation) == 2
    np.testing.assert_array_equal(validation[0]["a"], a[3])
    assert validation[1]["b"].shape == (1, 4) and validation[1]["b"].dtype == np.float32
    np.testing.assert_allclose(validation[1]["b"][0], b[4].astype(np.float32))
    assert ds.input_files(spec, tmp_path) == [tmp_path / "d.npz"]
    files_mode = ds.load_samples({"calibration": 3, "validation": 2}, [tmp_path / "d.npz"],
                                 inputs, "validation")
    np.testing.assert_array_equal(files_mode[1]["a"], validation[1]["a"])


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", image=np.zeros((4, 3, 8, 8), np.float32))
    spec = {"npz": "d.npz", "calibration": 2}
    with pytest.raises(StageError, match=r"input 'image' should be \(samples, 1, 3, 16, 16\) "
                                         r"or, batch 1, \(samples, 3, 16, 16\); got "
                                         r"\(4, 3, 8, 8\)"):
        ds.load_samples(spec, tmp_path, INPUTS, "calibration")
    with pytest.raises(StageError, match="no array for input 'x' \\(it has image\\)"):
        ds.load_samples(spec, tmp_path, {"x": {"shape": [1, 3, 8, 8]}}, "calibration")
    np.savez(tmp_path / "o.npz", image=np.array([object()] * 4))
    with pytest.raises(StageError, match="could not be read without pickle"):
        ds.load_samples({"npz": "o.npz", "calibration": 2}, tmp_path, INPUTS, "calibration")
    with pytest.raises(StageError, match=r"missing\.npz"):
        ds.input_files({"npz": "missing.npz"}, tmp_path)


def test_npy_single_input(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((3, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "d.npy", data)
    samples = ds.load_samples({"npy": "d.npy", "validation": 3}, tmp_path, INPUTS,
                              "validation")
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in samples]), data)
    with pytest.raises(StageError, match="feeds one input"):
        ds.load_samples({"npy": "d.npy", "validation": 3}, tmp_path,
                        {"a": INPUTS["image"], "b": INPUTS["image"]}, "validation")


def test_python_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_dataset_mod_q.py").write_text(textwrap.dedent("""
        import numpy as np

        def arrays():
            for i in range(4):
                yield np.full((3, 16, 16), i, np.float32)

        def dicts():
            return [{"a": np.full((1, 2), i), "b": np.zeros((1, 3))} for i in range(3)]

        def nothing():
            return 5
    """))
    samples = ds.load_samples({"python": "my_dataset_mod_q:arrays", "calibration": 2},
                              tmp_path, INPUTS, "validation")
    assert [float(s["image"].mean()) for s in samples] == [2.0, 3.0]
    assert samples[0]["image"].shape == (1, 3, 16, 16)
    inputs = {"a": {"shape": [1, 2]}, "b": {"shape": [1, 3]}}
    samples = ds.load_samples({"python": "my_dataset_mod_q:dicts", "calibration": 3}, tmp_path,
                              inputs, "calibration")
    assert [s["a"].dtype for s in samples] == [np.float32] * 3
    with pytest.raises(StageError, match="returned int, not an iterable"):
        ds.load_samples({"python": "my_dataset_mod_q:nothing", "calibration": 1}, tmp_path,
                        INPUTS, "calibration")
    with pytest.raises(StageError, match=r"sample 0: input 'image' should be \[1, 3, 8, 8\]"):
        ds.load_samples({"python": "my_dataset_mod_q:arrays", "calibration": 1}, tmp_path,
                        {"image": {"shape": [1, 3, 8, 8]}}, "calibration")
    # Files mode (no project dir): the worker puts the project on sys.path.
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(ds.load_samples({"python": "my_dataset_mod_q:arrays", "validation": 1}, [],
                               INPUTS, "validation")) == 1
    assert "my_dataset_mod_q" in sys.modules


# --- random ----------------------------------------------------------------------------------


def test_random_is_seeded_disjoint_and_warns() -> None:
    spec = {"random": {"seed": 3, "low": -1, "high": 1}, "calibration": 3, "validation": 2}
    inputs = {"x": {"shape": [1, 4]}, "n": {"shape": [2], "dtype": "int64"}}
    with pytest.warns(UserWarning, match="meaningless"):
        calibration = ds.load_samples(spec, Path("."), inputs, "calibration", None)
    with pytest.warns(UserWarning):
        again = ds.load_samples(spec, Path("."), inputs, "calibration", 2)
        validation = ds.load_samples(spec, Path("."), inputs, "validation", None)
        other_seed = ds.load_samples({**spec, "random": {"seed": 4}}, Path("."), inputs,
                                     "calibration", None)
    assert len(calibration) == 3 and len(validation) == 2 and len(again) == 2
    for a, b in zip(calibration, again, strict=False):
        np.testing.assert_array_equal(a["x"], b["x"])
    xs = [s["x"].tobytes() for s in calibration + validation]
    assert len(set(xs)) == 5
    assert calibration[0]["x"].tobytes() != other_seed[0]["x"].tobytes()
    assert all(s["x"].min() >= -1 and s["x"].max() <= 1 for s in calibration)
    assert calibration[0]["x"].dtype == np.float32 and calibration[0]["n"].dtype == np.int64
    assert ds.input_files(spec, Path(".")) == []
    with pytest.raises(StageError, match="say how many validation samples"):
        ds.load_samples({"random": {}}, Path("."), inputs, "validation", None)


# --- sample files ----------------------------------------------------------------------------


def test_save_and_load_samples_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [{"image": rng.random((1, 3, 4, 4), dtype=np.float32),
                "ids": np.arange(i, i + 3, dtype=np.int64)} for i in range(12)]
    ds.save_samples(samples, tmp_path / "a.npz")
    ds.save_samples(samples, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.namelist()[:3] == ["image__0.npy", "ids__0.npy", "image__1.npy"]
    loaded = ds.load_samples_npz(tmp_path / "a.npz")
    assert len(loaded) == 12 and list(loaded[10]) == ["image", "ids"]
    for a, b in zip(samples, loaded, strict=True):
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])
    changed = [dict(s) for s in samples]
    changed[5] = {**changed[5], "ids": changed[5]["ids"] + 1}
    ds.save_samples(changed, tmp_path / "c.npz")
    assert (tmp_path / "c.npz").read_bytes() != (tmp_path / "a.npz").read_bytes()
    np.savez(tmp_path / "bad.npz", image__0=np.zeros(1), image__2=np.zeros(1))
    with pytest.raises(StageError, match=r"indices are not 0\.\.1"):
        ds.load_samples_npz(tmp_path / "bad.npz")
