"""The plan cache (instant no-op): a run with nothing changed is answered from the stamp the
last build left, without loading the recipe or planning; anything that changed what the plan
read — or a damaged stamp — makes the run plan fully, and the result is always right.

Every build here is the real CLI in a subprocess; whether it planned is read from the modules
it imported (a full plan imports networkx and jsonschema, the stamp neither)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.plan.plan_cache import STAMP_DIR, PlanCache, cli_options, default_store_root
from buildsys.project import find_project_root
from buildsys.store.store import Store, default_cache_dir
from tests.conftest import REPO, Project

PY = sys.executable
PROBE = (
    "import sys\n"
    "from buildsys.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "planned = 'networkx' in sys.modules or 'jsonschema' in sys.modules\n"
    "print('PLANNED=' + str(planned), file=sys.stderr)\n"
    "sys.exit(code)\n"
)

RECIPE = f"""\
recipe: demo
# a comment
steps:
  upper:
    cmd: ["{PY}", "-c", "open('up.txt','w').write(open('src.txt').read().upper())"]
    deps: [src.txt]
    outs: [up.txt]
  count:
    cmd: ["{PY}", "-c", "open('n.txt','w').write(str(len(open('up.txt').read())))"]
    deps: [up.txt]
    outs: [n.txt]
"""


def build(project: Project, *args: str, recipe: str = "recipe.yaml") -> tuple[bool, str]:
    """Build with the CLI; (whether it planned, its stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUILD_")}
    env.update(PYTHONPATH=str(REPO), MODELBUILD_EXPLAIN_NOOP="1")
    result = subprocess.run([PY, "-c", PROBE, recipe, *args], cwd=project.root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    planned = [line for line in result.stderr.splitlines() if line.startswith("PLANNED=")]
    return planned[-1] == "PLANNED=True", result.stderr


def output(project: Project, stage: str, name: str) -> str:
    return (project.root / "build/demo/steps" / stage / name).read_text()


def make(project: Project) -> None:
    project.write("recipe.yaml", RECIPE)
    project.write("src.txt", "hello")
    assert build(project)[0]  # cold: plans, builds, stamps
    assert build(project)[0] is False  # nothing changed: answered from the stamp


def touch_later(path: Path) -> None:
    """A new mtime even on a file system with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_noop_is_answered_without_planning_and_says_what_a_noop_says(project: Project
                                                                      ) -> None:
    make(project)
    planned, stderr = build(project)
    assert not planned
    assert "0 built, 2 cached, 0 failed, 0 skipped in" in stderr
    stamps = list((project.cache / STAMP_DIR).glob("*.json"))
    assert len(stamps) == 1


def test_a_changed_recipe_byte_plans_fully(project: Project) -> None:
    make(project)
    recipe = project.root / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("# a comment", "# a comment!"))
    planned, stderr = build(project)
    assert planned and "0 built, 2 cached" in stderr  # a comment changes no stage
    assert build(project)[0] is False  # and the full plan stamped again


def test_a_touched_or_edited_input_plans_fully_and_rebuilds_what_changed(project: Project
                                                                         ) -> None:
    make(project)
    touch_later(project.root / "src.txt")
    planned, stderr = build(project)
    assert planned and "0 built, 2 cached" in stderr
    assert not build(project)[0]
    (project.root / "src.txt").write_text("hello world")
    planned, stderr = build(project)
    assert planned and "2 built" in stderr
    assert output(project, "count", "n.txt") == "11"


def test_a_deleted_or_replaced_output_plans_fully_and_restores_it(project: Project) -> None:
    make(project)
    out = project.root / "build/demo/steps/upper/up.txt"
    out.unlink()
    assert build(project)[0]
    assert out.read_text() == "HELLO"
    assert not build(project)[0]


def test_options_that_change_the_plan_have_their_own_stamp(project: Project) -> None:
    make(project)
    assert build(project, "steps/upper")[0]  # another selection: planned once
    assert not build(project, "steps/upper")[0]
    assert build(project, "--check")[0]  # options the stamp does not handle: always planned
    assert build(project, "--force", "steps/count")[0]
    assert build(project, "-v")[0]


def test_a_store_changed_behind_the_stamps_back_plans_fully(project: Project) -> None:
    make(project)
    store = Store(project.cache)  # another process drops a record (as `cache gc` may)
    try:
        (key,) = [k for k, r in store.index.records().items() if r["stage_id"] == "steps/count"]
        store.index.delete_record(key)
    finally:
        store.close()
    planned, stderr = build(project)
    assert planned and "1 built, 1 cached" in stderr  # its stage ran again
    assert not build(project)[0]
    subprocess.run(["rm", "-rf", str(project.cache / "index")], check=True)
    planned, stderr = build(project)
    assert planned and "2 built" in stderr  # every record gone: the stages ran again
    assert output(project, "count", "n.txt") == "5"
    subprocess.run(["rm", "-rf", str(project.cache / "cas")], check=True)
    planned, stderr = build(project)
    assert planned and "2 built" in stderr  # blobs gone


def test_a_damaged_stamp_plans_fully_never_answers_wrong(project: Project) -> None:
    make(project)
    (stamp,) = (project.cache / STAMP_DIR).glob("*.json")
    good = stamp.read_text()
    seal, _, text = good.partition("\n")
    body = json.loads(text)

    def sealed(value: object) -> str:  # damage that keeps the checksum right
        text = json.dumps(value)
        return f"{hashlib.sha256(text.encode()).hexdigest()}\n{text}"

    for damaged in ("", "{", "[]", "null", good[: len(good) // 2], f"{seal}\n[]",
                    good.replace("2 cached", "5 built"), sealed([]), sealed(None),
                    sealed({**body, "files": "nope"}), sealed({**body, "report": None}),
                    sealed({**body, "store_generation": "x"}),
                    sealed({k: v for k, v in body.items() if k != "globs"})):
        stamp.write_text(damaged)
        planned, stderr = build(project)
        assert planned, damaged[:80]
        assert "0 built, 2 cached" in stderr
    assert not build(project)[0]  # the full plan wrote a good stamp again


def test_a_failed_build_leaves_no_stamp(project: Project) -> None:
    make(project)
    project.write("recipe.yaml", RECIPE.replace("up.txt','w').write(", "up.txt','w').writ("))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([PY, "-m", "buildsys", "recipe.yaml", "-q"], cwd=project.root,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert not list((project.cache / STAMP_DIR).glob("*.json"))
    result = subprocess.run([PY, "-m", "buildsys", "recipe.yaml", "-q"], cwd=project.root,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 1  # still failing: never answered "up to date"


def test_a_changed_python_module_plans_fully(project: Project) -> None:
    """Model or dataset code enters the plan through plan/sources.py: a module it found (here
    a helper the dataset's module imports) is part of the stamp."""
    project.write("mydata/__init__.py", "")
    project.write("mydata/helpers.py", "SCALE = 1.0\n")
    project.write("mydata/samples.py", """\
        import numpy as np

        from mydata.helpers import SCALE


        def samples():
            return [np.full((1, 3, 8, 8), SCALE * i, dtype=np.float32) for i in range(3)]
        """)
    project.write("recipe.yaml", """\
        recipe: demo
        models:
          tiny:
            source: {python: "buildsys.zoo.tiny:tiny_convnet"}
            inputs: {x: {shape: [1, 3, 8, 8]}}
        datasets:
          numbers: {python: "mydata.samples:samples", calibration: 2, validation: 1}
        quantization:
          w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: numbers}
        targets: {onnx: {runtime: onnx}}
        devices: {host: {backend: host}}
        builds:
          - {model: tiny, quantization: w8a8, target: onnx, device: host}
        """)
    assert build(project, "data/*")[0]
    assert not build(project, "data/*")[0]
    helpers = project.root / "mydata/helpers.py"
    helpers.write_text("SCALE = 2.0\n")
    touch_later(helpers)
    planned, stderr = build(project, "data/*")
    assert planned and "0 cached" in stderr  # every dataset stage ran again


def test_a_new_file_matching_a_dataset_glob_is_noticed(tmp_path: Path) -> None:
    """Globs are re-run: a file added where a dataset looks is a change the stamp sees
    (checked on the stamp itself: a dataset of images needs the image toolchain to build)."""
    (tmp_path / "pyproject.toml").write_text("")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("recipe: demo\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.png").write_bytes(b"a")
    generation = tmp_path / "generation"
    generation.write_text("token")
    cache = PlanCache(recipe, cli_options([], [], False, None))
    assert cache.save(files={}, outputs=[], dirs=[], globs=[("data/*.png", str(tmp_path))],
                      store_generation=(generation, "token"),
                      report={"summary": "0 built, 1 cached, 0 failed, 0 skipped"})
    assert PlanCache(recipe, cli_options([], [], False, None)).answer() is not None
    assert PlanCache(recipe, cli_options(["x"], [], False, None)).answer() is None
    (tmp_path / "data/b.png").write_bytes(b"b")
    assert PlanCache(recipe, cli_options([], [], False, None)).answer() is None


def test_noop_of_many_steps_imports_neither_networkx_nor_jsonschema(project: Project) -> None:
    lines = ["recipe: demo", "steps:"]
    for i in range(50):
        project.write(f"src/{i}.txt", str(i))
        lines.append(f"  c{i}:\n    cmd: [cp, src/{i}.txt, o{i}.txt]\n    deps: [src/{i}.txt]"
                     f"\n    outs: [o{i}.txt]")
    project.write("recipe.yaml", "\n".join(lines) + "\n")
    assert build(project)[0]
    planned, stderr = build(project)
    assert not planned, stderr
    assert "0 built, 50 cached" in stderr


def test_the_stamps_store_is_the_builds_store(tmp_path: Path, monkeypatch: object) -> None:
    root = find_project_root(tmp_path)
    assert default_store_root(root, None) == default_cache_dir(root, None)
    assert default_store_root(root, "elsewhere") == default_cache_dir(root, "elsewhere")
    monkeypatch.setenv("MODELBUILD_CACHE_DIR", str(tmp_path / "env"))  # type: ignore[attr-defined]
    assert default_store_root(root, None) == default_cache_dir(root, None)


def test_model_sources_are_found_once_per_version_of_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """plan/sources.py: a plan asks for a model's files once per variant and stage; they are
    found once, and again only after one of them changed (an edit may add an import)."""
    from buildsys.plan import sources

    package = tmp_path / "memo_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text("import os\n")
    (package / "extra.py").write_text("")
    finds = []
    find = sources._find_module_files
    monkeypatch.setattr(sources, "_find_module_files",
                        lambda *args: finds.append(args) or find(*args))
    monkeypatch.setattr(sys, "path", list(sys.path))
    first = [sources.module_files("memo_pkg.net", tmp_path) for _ in range(36)]
    assert len(finds) == 1 and all(files == first[0] for files in first)
    assert package / "extra.py" not in first[0]
    net = package / "net.py"
    net.write_text("import os\nfrom memo_pkg import extra\n")
    touch_later(net)
    assert package / "extra.py" in sources.module_files("memo_pkg.net", tmp_path)
    assert len(finds) == 2
