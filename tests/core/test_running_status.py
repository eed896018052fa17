"""While stages run: remote stages wait outside the -j budget, and a stage's status line
(an AI Hub job's state and link) reaches the progress output. Real worker processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildsys.build import BuildOptions, run_build
from buildsys.recipe.load import load_recipe
from buildsys.stages.command import CommandStage
from tests.conftest import Project

PY = sys.executable
# Writes when it started and ended: two such steps overlap only if they ran at the same time.
WAITER = ("import json, time; t = time.time(); time.sleep(1.5); "
          "open('{out}', 'w').write(json.dumps([t, time.time()]))")


def _waiting_steps(project: Project, names: list[str]) -> Path:
    steps = "".join(f"""\
  {name}:
    cmd: ["{PY}", "-c", "{WAITER.format(out=name + '.json')}"]
    outs: [{name}.json]
""" for name in names)
    return project.write("recipe.yaml", f"recipe: waits\nsteps:\n{steps}")


def _interval(project: Project, name: str) -> tuple[float, float]:
    start, end = json.loads((project.root / f"build/waits/steps/{name}/{name}.json").read_text())
    return start, end


def test_remote_stages_wait_together_beyond_jobs(project: Project,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _waiting_steps(project, ["a", "b", "c"])
    # Stand-ins for AI Hub jobs: the scheduler only asks the stage class whether it is remote.
    monkeypatch.setattr(CommandStage, "remote", True)
    options = BuildOptions(jobs=1, quiet=True, cache_dir=str(project.cache))
    assert run_build(load_recipe(recipe), options) == 0
    intervals = [_interval(project, n) for n in "abc"]
    latest_start = max(start for start, _ in intervals)
    earliest_end = min(end for _, end in intervals)
    assert latest_start < earliest_end, f"remote stages ran one after another: {intervals}"


def test_local_stages_keep_to_jobs(project: Project) -> None:
    recipe = _waiting_steps(project, ["a", "b"])
    options = BuildOptions(jobs=1, quiet=True, cache_dir=str(project.cache))
    assert run_build(load_recipe(recipe), options) == 0
    (a_start, a_end), (b_start, b_end) = _interval(project, "a"), _interval(project, "b")
    assert a_end <= b_start or b_end <= a_start


def _slow_step_reporting(project: Project, code: str) -> None:
    """A recipe of one step, `slow`, running `code` (which reports through $MODELBUILD_STATUS
    and writes s.txt)."""
    project.write("recipe.yaml", f"""\
recipe: status
steps:
  slow:
    cmd: ["{PY}", "-c", "{code}"]
    outs: [s.txt]
""")


def test_a_running_stage_status_reaches_the_progress_output(project: Project) -> None:
    status = ("import os, time; open(os.environ['MODELBUILD_STATUS'], 'w')"
              ".write('job j123 on Galaxy S23: RUNNING https://example/jobs/j123'); "
              "time.sleep(1.5); open('s.txt', 'w').write('done')")
    _slow_step_reporting(project, status)
    stderr = project.build()["process"].stderr
    assert "steps/slow: job j123 on Galaxy S23: RUNNING https://example/jobs/j123" in stderr
    # Not an output: the status file never reaches the build directory or the store's record.
    assert sorted(p.name for p in (project.root / "build/status/steps/slow").iterdir()) == ["s.txt"]


def _run_on_a_terminal(project: Project, *args: str, size: tuple[int, int] = (160, 40)
                       ) -> str:
    """Run modelbuild with a pseudo-terminal of `size` (columns, rows) as stderr (the live
    display) and return what it drew, escape sequences and all."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    from tests.conftest import REPO

    leader, follower = pty.openpty()
    columns, rows = size
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns),
           "LINES": str(rows), "TERM": "xterm"}
    proc = subprocess.Popen([PY, "-m", "buildsys", *args], cwd=project.root, env=env,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([leader], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed, the build has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    else:
        proc.kill()
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_the_live_display_shows_the_status_on_the_stage_row(project: Project) -> None:
    status = ("import os, time; [(open(os.environ['MODELBUILD_STATUS'], 'w')"
              ".write(f'step {i} of 3 [see log]'), time.sleep(0.7)) for i in range(3)]; "
              "open('s.txt', 'w').write('done')")
    _slow_step_reporting(project, status)
    drawn = _run_on_a_terminal(project, "recipe.yaml", "-v")
    assert "step 2 of 3 [see log]" in drawn  # shown verbatim, brackets and all
    assert "[cyan]" not in drawn and "[dim]" not in drawn  # never markup drawn as text
    assert "built" in drawn and "steps/slow" in drawn


def _as_seen_on_the_terminal(drawn: str, size: tuple[int, int]) -> list[str]:
    """What a terminal of `size` shows after receiving `drawn` — its scrollback and then its
    screen — as text lines: cursor moves and erasures applied, as a user would read it."""
    import pyte

    columns, rows = size
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    screen.set_mode(pyte.modes.LNM)  # a pty turns "\n" into "\r\n"
    pyte.Stream(screen).feed(drawn)
    scrolled = ["".join(line[x].data for x in range(columns)).rstrip()
                for line in screen.history.top]
    return scrolled + [line.rstrip() for line in screen.display]


def test_the_live_display_shows_every_finished_stage_exactly_once(project: Project) -> None:
    """Stages finishing in bursts while the running rows redraw four times a second: every
    stage's final line must be on the terminal once (none erased by a redraw, none doubled)
    and no running row may be left behind in the scrollback."""
    steps = "".join(f"""\
  stage_with_a_long_name_{i:02d}:
    cmd: ["{PY}", "-c", "import time; time.sleep({(i * 7) % 5 / 10}); open('o{i}', 'w')"]
    outs: [o{i}]
""" for i in range(30))
    project.write("recipe.yaml", f"recipe: burst\nsteps:\n{steps}")
    size = (72, 12)  # narrow and short: final lines wrap, the display fills the screen
    lines = _as_seen_on_the_terminal(_run_on_a_terminal(project, "recipe.yaml", "-j", "3",
                                                        size=size), size)
    text = "\n".join(lines)
    for i in range(30):
        stage = f"steps/stage_with_a_long_name_{i:02d}"
        assert text.count(stage) == 1, f"{stage} shown {text.count(stage)} times:\n{text}"
    finals = [line for line in lines if line.startswith("[") and "✓ built" in line]
    assert sorted(int(line[1:line.index("/")]) for line in finals) == list(range(1, 31))
    assert "⠿" not in text and "stages settled" not in text, text  # no stale live rows
    assert "30 built, 0 cached, 0 failed, 0 skipped" in text
