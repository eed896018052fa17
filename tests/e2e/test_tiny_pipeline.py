"""The whole local pipeline on a tiny conv net: real torch, ONNX, ORT, AIMET, QNN HTP."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, Project, statuses

pytestmark = pytest.mark.slow

VARIANTS = [f"tiny/{q}/{t}/{d}" for q in ("float", "w8a8", "w8a16")
            for t, d in (("onnx", "host"), ("qnn", "sm8550-sim"))]


def tiny_project(root: Path) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "recipes" / "tiny.yaml", root / "recipe.yaml")
    return Project(root)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict]:
    project = tiny_project(tmp_path_factory.mktemp("tiny"))
    return project, project.build()


def test_cold_build_produces_every_variant(built: tuple[Project, dict]) -> None:
    project, report = built
    assert report["ok"], report["process"].stderr
    assert statuses(report, "failed") == set()
    dist = project.root / "release" / "tiny"
    archives = sorted(p.name for p in dist.glob("*.tar.gz"))
    assert archives == sorted(f"tiny-{v.replace('/', '-')}.tar.gz" for v in VARIANTS)
    index = json.loads((dist / "index.json").read_text())
    rows = {r["id"]: r for r in index["variants"]}
    assert set(rows) == set(VARIANTS)
    # int8 weights: about four times smaller than float (tiny nets carry some overhead)
    assert rows["tiny/w8a8/onnx/host"]["size_ratio_vs_float"] > 2.5
    for variant in VARIANTS:
        assert rows[variant]["psnr_db"]["logits"] >= 20, rows[variant]
        assert rows[variant]["latency_where"]
    assert "simulator" in rows["tiny/w8a8/qnn/sm8550-sim"]["latency_where"]
    assert "| tiny/w8a8/onnx/host |" in (dist / "README.md").read_text()


def test_archive_holds_model_and_manifest(built: tuple[Project, dict]) -> None:
    project, _ = built
    archive = project.root / "release" / "tiny" / "tiny-tiny-w8a8-qnn-sm8550-sim.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert all(m.mtime == tar.getmember(names[0]).mtime for m in tar.getmembers())
    assert names == sorted(names)
    assert "model/model_ctx.onnx" in names and "model/model_ctx_qnn.bin" in names
    assert manifest["variant"]["quantization"] == "w8a8"
    assert manifest["tools"]["onnxruntime-qnn"] != "not installed"
    assert "untrained" in manifest["weights"]
    assert manifest["metrics"]["validation"]["outputs"]["logits"]["psnr_db"] > 20
    assert len(manifest["files"]["model/model_ctx_qnn.bin"]["sha256"]) == 64
    assert manifest["stage_keys"]


def test_second_build_runs_nothing(built: tuple[Project, dict]) -> None:
    project, _ = built
    again = project.build()
    assert statuses(again, "built") == set()


def test_calibration_count_change_reruns_only_quantize_and_after(
        built: tuple[Project, dict]) -> None:
    project, _ = built
    recipe = project.root / "recipe.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace(
        "w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}",
        "w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos, "
        "samples: 3}"))
    try:
        report = project.build()
    finally:
        recipe.write_text(original)
    ran = statuses(report, "built")
    assert "tiny/export" not in ran and "tiny/reference" not in ran
    assert "tiny/w8a8/quantize" in ran
    assert all(s.startswith(("tiny/w8a8/", "data/photos/calibration", "release/"))
               for s in ran), ran
    assert not any(s.startswith(("tiny/float/", "tiny/w8a16/")) for s in ran)


def test_threshold_failure_names_variant_and_figure(built: tuple[Project, dict]) -> None:
    project, _ = built
    recipe = project.root / "recipe.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace("psnr_min_db: 20", "psnr_min_db: 200"))
    try:
        report = project.build("recipe.yaml", "-k", check=False)
    finally:
        recipe.write_text(original)
    assert report["process"].returncode == 1
    assert "tiny/w8a8/onnx/host: logits: psnr_db" in report["process"].stderr
    assert "below psnr_min_db 200" in report["process"].stderr


def test_clean_builds_in_two_directories_give_identical_archives(
        built: tuple[Project, dict], tmp_path: Path) -> None:
    first, _ = built
    assert first.build()["ok"]  # earlier tests edited the recipe: bring release/ back to it
    other = tiny_project(tmp_path / "elsewhere")
    report = other.build()
    assert report["ok"], report["process"].stderr
    for archive in sorted((first.root / "release" / "tiny").glob("*.tar.gz")):
        twin = other.root / "release" / "tiny" / archive.name
        assert twin.read_bytes() == archive.read_bytes(), archive.name
    assert (other.root / "recipe.lock").exists()
    # and the lock agrees with a from-scratch rebuild: the reproducibility gate
    check = other.build("recipe.yaml", "--check", "--cache-dir", str(tmp_path / "fresh"))
    assert check["ok"], check["process"].stderr
