"""The shared remote cache, against a real SeaweedFS S3 server and a real shared directory.

Everything drives the real CLI in subprocesses and judges by what is on disk and on the
server. Command-step recipes keep most tests to seconds; one test builds the tiny torch
pipeline (cut down to float + w8a8 on the host) for the two-runner story with real archives.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Project, statuses
from tests.reliability.helpers import PY, chain_recipe, kill_group, start_build
from tests.remote.conftest import CREDENTIALS, SECRET_KEY, SeaweedServer, start_seaweed

STEPS = 6


def chain_leaves(recipe_text: str) -> set[str]:
    """Steps whose outputs no other step reads: the final artifacts of a chain recipe."""
    steps = yaml.safe_load(recipe_text)["steps"]
    read = {dep for step in steps.values() for dep in step.get("deps") or []}
    return {f"steps/{name}" for name, step in steps.items() if not set(step["outs"]) & read}


LEAVES = chain_leaves(chain_recipe(STEPS, sleep=0.0))


def build_dir(root: Path) -> Path:
    """build/<recipe>/ under the project root (the test projects' root is their directory)."""
    return root / "build" / yaml.safe_load((root / "recipe.yaml").read_text())["recipe"]


def release_dir(root: Path) -> Path:
    return root / "release" / yaml.safe_load((root / "recipe.yaml").read_text())["recipe"]


def project_at(root: Path, recipe_text: str) -> Project:
    project = Project(root)
    project.write("recipe.yaml", recipe_text)
    return project


def build(project: Project, *args: str, check: bool = True) -> dict[str, Any]:
    return project.build("recipe.yaml", *args, check=check, env=CREDENTIALS)


def leaf_outputs(root: Path, leaves: set[str] = LEAVES) -> dict[str, str]:
    """sha256 of the final outputs (what nothing downstream reads) in the build directory."""
    out = {}
    for stage in sorted(leaves):
        for path in sorted((build_dir(root) / stage).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    assert out, f"no outputs of {sorted(leaves)} under {build_dir(root)}"
    return out


def objects(server: SeaweedServer, prefix: str) -> dict[str, int]:
    import obstore

    return {o["path"]: o["size"] for batch in obstore.list(server.store(prefix)) for o in batch}


def read_object(server: SeaweedServer, prefix: str, path: str) -> bytes:
    import obstore

    return bytes(obstore.get(server.store(prefix), path).bytes())


def assert_remote_consistent(server: SeaweedServer, prefix: str) -> dict[str, Any]:
    """Every record names only blobs that are there and whose bytes match their names."""
    listing = objects(server, prefix)
    records = {p: json.loads(read_object(server, prefix, p)) for p in listing
               if p.startswith("ac/1/")}
    for path, record in records.items():
        assert path == f"ac/1/{record['key']}"
        for name, output in record["outputs"].items():
            blob = f"cas/{output['digest']}"
            assert blob in listing, f"{record['stage_id']}: record names missing {name}"
            data = read_object(server, prefix, blob)
            assert hashlib.sha256(data).hexdigest() == output["digest"], blob
            assert len(data) == output["size"]
    return records


def remote_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: remote cache")]


# --- the two-runner story on the tiny torch pipeline --------------------------------------------

TINY_CUT = {"- {model: tiny, quantization: [float, w8a8, w8a16], target: onnx, device: host}":
            "- {model: tiny, quantization: [float, w8a8], target: onnx, device: host}",
            "- {model: tiny, quantization: [float, w8a8, w8a16], target: qnn, "
            "device: sm8550-sim}\n": ""}


def tiny_runner(root: Path) -> Project:
    text = (REPO / "recipes" / "tiny.yaml").read_text()
    for old, new in TINY_CUT.items():
        assert old in text, old
        text = text.replace(old, new)
    return project_at(root, text)


def change_w8a8_to_per_channel(project: Project) -> None:
    recipe = project.root / "recipe.yaml"
    old = "w8a8: {engine: onnxruntime, weights: int8, activations: int8, calibration: photos}"
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, old[:-1] + ", per_channel: true}"))


def archives(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(release_dir(root).glob("*.tar.gz"))}


@pytest.mark.slow
def test_two_runners_share_one_remote(seaweed: SeaweedServer, tmp_path: Path) -> None:
    remote = seaweed.url("two-runners")
    a, b = tiny_runner(tmp_path / "a"), tiny_runner(tmp_path / "b")

    first = build(a, "--remote", remote)
    assert first["ok"] and not statuses(first, "failed")
    assert first["remote"]["records_uploaded"] == len(statuses(first, "built"))

    # B: an empty store, the same recipe: nothing runs, the archives are A's bytes
    second = build(b, "--remote", remote, "--summary", str(tmp_path / "summary.md"))
    assert statuses(second, "built") == set(), second["process"].stderr
    assert archives(b.root) == archives(a.root) and len(archives(b.root)) == 2
    # only what the release needs was downloaded: not the captured model or the fp32 ONNX
    fetched = second["remote"]["blobs_downloaded"]
    assert 0 < fetched < len(objects(seaweed, "two-runners")) // 2
    assert not (build_dir(b.root) / "tiny" / "export").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "| tiny/w8a8/onnx/host |" in summary and "| variant | size |" in summary

    # B changes one scheme: exactly that variant's stages (and the release index) run
    change_w8a8_to_per_channel(b)
    third = build(b, "--remote", remote)
    built = statuses(third, "built")
    assert {"tiny/w8a8/quantize", "tiny/w8a8/onnx/compile"} <= built, built
    assert all("/w8a8" in s or s == "release/index" for s in built), built

    # A makes the same change and gets B's results from the remote
    change_w8a8_to_per_channel(a)
    plan = a.run("recipe.yaml", "--plan", "--remote", remote, env=CREDENTIALS).stdout
    assert re.search(r"tiny/w8a8/quantize\s+remote\s+remote hit", plan), plan
    fourth = build(a, "--remote", remote)
    assert statuses(fourth, "built") == set(), fourth["process"].stderr
    assert archives(a.root) == archives(b.root)
    # A's old w8a8 model is not left in build/ looking like this build's (it stays remote)
    stale = build_dir(a.root) / "tiny" / "w8a8" / "quantize"
    assert stale.is_dir() and not [p for p in stale.rglob("*") if p.is_file()]
    assert_remote_consistent(seaweed, "two-runners")


# --- a shared directory, `cache push`, --plan, zero requests on a no-op ------------------------

def test_directory_remote_push_plan_and_quiet_noop(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    recipe = chain_recipe(STEPS, sleep=0.0)
    a, b = project_at(tmp_path / "a", recipe), project_at(tmp_path / "b", recipe)
    build(a, "--no-remote")
    pushed = a.run("cache", "push", "recipe.yaml", "--remote", str(shared))
    assert f"pushed {STEPS} cached stage(s)" in pushed.stdout, pushed.stdout
    blobs = sorted(p.name for p in (shared / "cas").iterdir())
    records = sorted(p.name for p in (shared / "ac" / "1").iterdir())
    assert len(records) == STEPS and all(re.fullmatch(r"[0-9a-f]{64}", n) for n in blobs)
    again = a.run("cache", "push", "recipe.yaml", "--remote", str(shared))
    assert "0 new record(s), 0 blob(s)" in again.stdout  # create-only: already there

    plan = b.run("recipe.yaml", "--plan", "--remote", f"file://{shared}").stdout
    assert f"0 to run, 0 cached, 0 skipped, {STEPS} remote hit(s)" in plan, plan

    env_remote = {**CREDENTIALS, "MODELBUILD_REMOTE": str(shared)}
    first = b.build("recipe.yaml", env=env_remote)
    assert statuses(first, "built") == set()
    assert leaf_outputs(b.root) == leaf_outputs(a.root)
    assert not (build_dir(b.root) / "steps" / "s0").exists()  # intermediate: not downloaded
    noop = b.build("recipe.yaml", env=env_remote)
    assert statuses(noop, "built") == set() and noop["remote"]["requests"] == 0
    # offline, the results the remote gave are remembered: still nothing to build
    ignored = b.build("recipe.yaml", "--no-remote", env=env_remote)
    assert "remote" not in ignored and statuses(ignored, "built") == set()
    # ...and a stage that must run gets its inputs rebuilt, not invented
    forced = b.build("recipe.yaml", "--no-remote", "--force", "steps/s5", env=env_remote)
    assert "steps/s5" in statuses(forced, "built")
    assert leaf_outputs(b.root) == leaf_outputs(a.root)


# --- faults ------------------------------------------------------------------------------------

def test_server_killed_mid_build(tmp_path: Path) -> None:
    """Two builds on one server, which is killed once both have finished two stages: the
    plain build finishes locally with one warning; the one with --remote-required finishes
    its stages too (kept in its store) but fails, naming the remote."""
    server = start_seaweed(tmp_path / "server")
    recipe = chain_recipe(STEPS, sleep=0.3)
    plain, strict = project_at(tmp_path / "a", recipe), project_at(tmp_path / "c", recipe)
    try:
        processes = [start_build(p.root, "--remote", server.url(name), "--report", "r.json",
                                 *extra, env=CREDENTIALS)
                     for p, name, extra in ((plain, "killed", ()),
                                            (strict, "killed-strict", ("--remote-required",)))]
        deadline = time.monotonic() + 60
        while not all((build_dir(p.root) / "steps" / "s1").exists() for p in (plain, strict)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.05)
    finally:
        server.kill()
    (_, stderr), (_, strict_stderr) = (p.communicate(timeout=120) for p in processes)
    assert processes[0].returncode == 0, stderr
    warned = remote_warnings(stderr)
    assert len(warned) == 1 and server.endpoint in warned[0], stderr
    report = json.loads((plain.root / "r.json").read_text())
    assert len(statuses(report, "built")) == STEPS and report["remote"]["failure"]
    assert processes[1].returncode == 1, strict_stderr
    assert re.search(r"error: --remote-required: remote cache .*127\.0\.0\.1", strict_stderr)
    strict_report = json.loads((strict.root / "r.json").read_text())
    assert len(statuses(strict_report, "built")) == STEPS and not strict_report["ok"]

    # a new runner with the dead remote required: fails clearly, before running anything
    b = project_at(tmp_path / "b", recipe)
    started = time.monotonic()
    failed = b.run("recipe.yaml", "--remote", server.url("killed"), "--remote-required",
                   check=False, env=CREDENTIALS)
    assert failed.returncode == 1 and time.monotonic() - started < 30
    assert "--remote-required" in failed.stderr and server.endpoint in failed.stderr
    assert not (b.root / "build").exists()
    # without --remote-required the same runner builds locally, with one warning
    local = build(b, "--remote", server.url("killed"))
    assert local["ok"] and len(remote_warnings(local["process"].stderr)) == 1
    for text in (stderr, strict_stderr, failed.stderr, local["process"].stderr,
                 (plain.root / "r.json").read_text()):
        assert SECRET_KEY not in text


def test_corrupt_blobs_on_server_are_never_used(seaweed: SeaweedServer,
                                                tmp_path: Path) -> None:
    """A final artifact's blob and the blob of the intermediate it is made from, each with
    one bit flipped on the server: both stages run here, in order, and the artifact is right.
    """
    import obstore
    import yaml

    recipe = chain_recipe(STEPS, sleep=0.0)
    a, b = project_at(tmp_path / "a", recipe), project_at(tmp_path / "b", recipe)
    build(a, "--remote", seaweed.url("corrupt"))
    records = {r["stage_id"]: r for r in assert_remote_consistent(seaweed, "corrupt").values()}
    source = yaml.safe_load(recipe)["steps"]["s5"]["deps"][0].removesuffix(".txt")
    originals = {}
    for stage in ("s5", source):
        digest = records[f"steps/{stage}"]["outputs"][f"{stage}.txt"]["digest"]
        good = read_object(seaweed, "corrupt", f"cas/{digest}")
        obstore.put(seaweed.store("corrupt"), f"cas/{digest}", bytes([good[0] ^ 1]) + good[1:])
        originals[digest] = good

    report = build(b, "--remote", seaweed.url("corrupt"))
    assert statuses(report, "built") == {"steps/s5", f"steps/{source}"}, report["stages"]
    assert leaf_outputs(b.root) == leaf_outputs(a.root)
    corrupt = [w for w in remote_warnings(report["process"].stderr) if "corrupt" in w]
    assert len(corrupt) == 2, report["process"].stderr
    # B's uploads replaced the damaged blobs with the right bytes
    for digest, good in originals.items():
        assert read_object(seaweed, "corrupt", f"cas/{digest}") == good


def test_record_pointing_at_deleted_blob_is_a_miss(seaweed: SeaweedServer,
                                                   tmp_path: Path) -> None:
    import obstore

    recipe = chain_recipe(STEPS, sleep=0.0)
    a, b = project_at(tmp_path / "a", recipe), project_at(tmp_path / "b", recipe)
    build(a, "--remote", seaweed.url("deleted"))
    records = assert_remote_consistent(seaweed, "deleted")
    leaf = next(r for r in records.values() if r["stage_id"] == "steps/s4")
    obstore.delete(seaweed.store("deleted"), f"cas/{leaf['outputs']['s4.txt']['digest']}")

    plan = b.run("recipe.yaml", "--plan", "--remote", seaweed.url("deleted"),
                 env=CREDENTIALS)
    assert re.search(r"steps/s4\s+run", plan.stdout), plan.stdout
    assert "names missing blob" in plan.stderr
    report = build(b, "--remote", seaweed.url("deleted"))
    assert statuses(report, "built") == {"steps/s4"}
    assert leaf_outputs(b.root) == leaf_outputs(a.root)


def test_untrusted_record_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    recipe = chain_recipe(STEPS, sleep=0.0)
    a, b = project_at(tmp_path / "a", recipe), project_at(tmp_path / "b", recipe)
    build(a, "--remote", str(shared))
    for path in (shared / "ac" / "1").iterdir():
        record = json.loads(path.read_text())
        if record["stage_id"] == "steps/s5":
            (name, output), = record["outputs"].items()
            record["outputs"] = {f"../../{name}": output}  # would write outside build/
            path.chmod(0o644)
            path.write_text(json.dumps(record))
        elif record["stage_id"] == "steps/s4":
            record["outputs"]["s4.txt"]["url"] = "http://elsewhere/s4.txt"
            path.chmod(0o644)
            path.write_text(json.dumps(record))
    report = build(b, "--remote", str(shared), "--remote-read-only")
    assert statuses(report, "built") == {"steps/s4", "steps/s5"}
    refused = report["remote"]["refused"]
    assert any("not a plain relative path" in r for r in refused), refused
    assert any("more than a digest and a size" in r for r in refused), refused
    assert leaf_outputs(b.root) == leaf_outputs(a.root)
    assert not list(tmp_path.glob("*.txt")) and not list(b.root.glob("*.txt"))


def test_upload_killed_half_way(seaweed: SeaweedServer, tmp_path: Path) -> None:
    """SIGKILL the build while it uploads a 48 MB blob (multipart): the remote never holds a
    record without its blob, and the next build there completes the upload."""
    code = ("import hashlib; h = hashlib.sha256(b'seed'); out = open('big.bin', 'wb')\n"
            "for i in range(1536): h.update(h.digest()); out.write(h.digest() * 1024)")
    recipe = ("recipe: big\nsteps:\n  big:\n"
              f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]\n"
              "    outs: [big.bin]\n")
    a = project_at(tmp_path / "a", recipe)
    process = start_build(a.root, "--remote", seaweed.url("half"), env=CREDENTIALS)
    deadline = time.monotonic() + 60
    while not (build_dir(a.root) / "steps" / "big" / "big.bin").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    kill_group(process)  # the upload starts as the output is stored: mid-upload or sooner
    assert not [p for p in objects(seaweed, "half") if p.startswith("ac/")]
    assert_remote_consistent(seaweed, "half")

    again = build(a, "--remote", seaweed.url("half"))
    assert statuses(again, "built") == set()  # its local result survived the kill
    # a cached stage is not pushed by a build, `cache push` completes the upload
    a.run("cache", "push", "recipe.yaml", "--remote", seaweed.url("half"), env=CREDENTIALS)
    records = assert_remote_consistent(seaweed, "half")
    assert [r["stage_id"] for r in records.values()] == ["steps/big"]
    b = project_at(tmp_path / "b", recipe)
    fetched = build(b, "--remote", seaweed.url("half"))
    assert statuses(fetched, "built") == set() and fetched["remote"]["bytes_downloaded"] \
        == 48 * 1024 * 1024
    assert leaf_outputs(b.root, {"steps/big"}) == leaf_outputs(a.root, {"steps/big"})
    # a large transfer reports its bytes and rate
    assert re.search(r"remote cache: downloading big\.bin: 50\.3 MB in [\d.]+ s \([\d.]+ "
                     r"[kMG]B/s\)", fetched["process"].stderr), fetched["process"].stderr


def test_four_builds_share_one_remote_at_once(seaweed: SeaweedServer, tmp_path: Path) -> None:
    recipe = chain_recipe(STEPS, sleep=0.2, seed=3)
    projects = [project_at(tmp_path / f"p{i}", recipe) for i in range(4)]
    processes = [start_build(p.root, "--remote", seaweed.url("four"), env=CREDENTIALS)
                 for p in projects]
    results = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
        assert "not deterministic" not in stderr and not remote_warnings(stderr), stderr
    leaves = chain_leaves(recipe)
    first = leaf_outputs(projects[0].root, leaves)
    assert all(leaf_outputs(p.root, leaves) == first for p in projects[1:])
    records = assert_remote_consistent(seaweed, "four")
    assert sorted(r["stage_id"] for r in records.values()) == sorted(
        f"steps/s{i}" for i in range(STEPS))


def test_nondeterministic_stage_is_reported(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    code = "import os; open('noise.bin', 'wb').write(os.urandom(64))"
    recipe = ("recipe: noise\nsteps:\n  noise:\n"
              f"    cmd: [{json.dumps(PY)}, \"-c\", {json.dumps(code)}]\n"
              "    outs: [noise.bin]\n")
    a, b = project_at(tmp_path / "a", recipe), project_at(tmp_path / "b", recipe)
    build(a, "--remote", str(shared))
    report = build(b, "--remote", str(shared), "--force", "steps/noise")
    assert "steps/noise is not deterministic" in report["process"].stderr
    assert "noise.bin" in report["process"].stderr


def test_remote_read_only_writes_nothing(seaweed: SeaweedServer, tmp_path: Path) -> None:
    recipe = chain_recipe(STEPS, sleep=0.0)
    a = project_at(tmp_path / "a", recipe)
    report = build(a, "--remote", seaweed.url("read-only"), "--remote-read-only")
    assert len(statuses(report, "built")) == STEPS and objects(seaweed, "read-only") == {}
    assert report["remote"]["writable"] is False


def test_bad_remote_urls_are_usage_errors(tmp_path: Path) -> None:
    from buildsys.errors import UsageError
    from buildsys.store.remote_url import open_location

    project = project_at(tmp_path, chain_recipe(2, sleep=0.0))
    result = project.run("recipe.yaml", "--remote", "ftp://host/x", check=False)
    assert result.returncode == 2 and "expected s3://BUCKET" in result.stderr, result.stderr
    result = project.run("recipe.yaml", "--remote-required", check=False)
    assert result.returncode == 2 and "no remote cache given" in result.stderr
    assert not (tmp_path / "build").exists()
    for url, expected in (("s3://key:secret@bucket", "not in the URL"),
                          ("s3://bucket?colour=red", "unknown option(s) colour"),
                          ("s3:///prefix", "no bucket")):
        with pytest.raises(UsageError, match=re.escape(expected)) as caught:
            open_location(url)
        assert "secret@" not in str(caught.value)


def test_record_shape_checks() -> None:
    from buildsys.store.record import record_problem

    key = "a" * 64
    good = {"stage_id": "steps/x", "kind": "command", "key": key, "ingredients": {},
            "outputs": {"sub/x.txt": {"digest": "b" * 64, "size": 3}}, "metrics": {},
            "duration_s": 0.1, "log": ""}
    assert record_problem(good, key) is None
    bad_cases = [
        ({**good, "key": "c" * 64}, "another stage key"),
        ({**good, "script": "rm -rf /"}, "unexpected field"),
        ({**good, "outputs": {"/etc/passwd": {"digest": "b" * 64, "size": 3}}}, "plain"),
        ({**good, "outputs": {"a/../../x": {"digest": "b" * 64, "size": 3}}}, "plain"),
        ({**good, "outputs": {"x": {"digest": "B" * 64, "size": 3}}}, "sha256"),
        ({**good, "outputs": {"x": {"digest": "b" * 64, "size": True}}}, "size"),
        ({**good, "outputs": {"x": {"digest": "b" * 64, "size": 3, "path": "/x"}}}, "more"),
        ([good], "JSON object"),
    ]
    for record, expected in bad_cases:
        problem = record_problem(record, key)
        assert problem is not None and expected in problem, (record, problem)


def test_credentials_stay_out_of_everything(tmp_path: Path) -> None:
    """A failing S3 remote (nothing listens there): the message names the host, never the
    secret; and nothing in the project or its store holds it."""
    project = project_at(tmp_path / "p", chain_recipe(2, sleep=0.0))
    report = build(project, "--remote", "s3://cache/x?endpoint=http://127.0.0.1:9")
    stderr = report["process"].stderr
    assert report["ok"] and len(remote_warnings(stderr)) == 1
    assert "127.0.0.1:9" in stderr and SECRET_KEY not in stderr
    for path in project.root.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_a_remote_that_never_answers_costs_one_timeout(tmp_path: Path) -> None:
    """A server that accepts connections and then says nothing (a hung proxy): the build
    waits one request timeout, warns once and builds locally; it never hangs."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept_and_hold() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    port = listener.getsockname()[1]
    project = project_at(tmp_path, chain_recipe(3, sleep=0.0))
    started = time.monotonic()
    try:
        report = build(project, "--remote", f"s3://cache/x?endpoint=http://127.0.0.1:{port}")
    finally:
        listener.close()
        for connection in held:
            connection.close()
    assert report["ok"] and len(statuses(report, "built")) == 3
    assert len(remote_warnings(report["process"].stderr)) == 1
    assert time.monotonic() - started < 45  # one 10 s request timeout, not one per stage


def listening_addresses(pid: int) -> list[str]:
    """host:port (hex, as the kernel writes it) of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def test_weed_server_binds_loopback_only(seaweed: SeaweedServer) -> None:
    addresses = listening_addresses(seaweed.process.pid)
    assert f"0100007F:{seaweed.port:04X}" in addresses  # the S3 port, on 127.0.0.1
    assert all(a.startswith("0100007F:") for a in addresses), addresses
