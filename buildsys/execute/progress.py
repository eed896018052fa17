"""What the user sees while a build runs: a live line per running stage on a terminal
(rich), plain one-line events otherwise (CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from buildsys.execute.runner import Outcome
from buildsys.plan.status import Status

SYMBOL = {Status.BUILT: "✓", Status.CACHED: "·", Status.FAILED: "✗", Status.SKIPPED: "-"}


class PlainProgress:
    """One line per event; `verbose` also lists cached stages, `quiet` only failures."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.total = total
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose
        self.done = 0
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def started(self, stage_id: str, reason: str) -> None:
        if not self.quiet:
            self._write(f"[{self.done}/{self.total}] run  {stage_id}  ({reason})")

    def note(self, stage_id: str, text: str) -> None:
        """A running stage's new status line (e.g. an AI Hub job's state and link)."""
        if not self.quiet:
            self._write(f"      {stage_id}: {text}")

    def finished(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.status == Status.CACHED and not self.verbose and \
                outcome.reason.startswith("up to date"):
            return
        if self.quiet and outcome.status != Status.FAILED:
            return
        line = f"[{self.done}/{self.total}] {SYMBOL[outcome.status]} {outcome.status:<7} " \
               f"{outcome.stage_id}"
        if outcome.status == Status.BUILT:
            line += f"  {outcome.duration_s:.1f} s"
            if outcome.worker and not outcome.worker.startswith(("local-", "remote")):
                line += f"  on {outcome.worker}"  # a cluster's worker
        elif outcome.status != Status.CACHED or outcome.reason != "up to date":
            line += f"  ({outcome.error or outcome.reason})"
        if outcome.status == Status.FAILED and outcome.log_path:
            line += f"\n      log: {outcome.log_path}"
        self._write(line)

    def close(self) -> None:
        pass


class LiveProgress(PlainProgress):
    """A rich live display: finished stages scroll above, running ones tick below."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, **kwargs: Any) -> None:
        super().__init__(total, stream, **kwargs)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.running: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                         transient=True, get_renderable=self._render)
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for stage_id, started in sorted(self.running.items()):
            # Text cells, not markup: a line printed with markup off redraws this table too.
            table.add_row(Text("⠿", style="cyan"), Text(stage_id),
                          Text(f"{now - started:5.0f} s", style="dim"),
                          Text(self.notes.get(stage_id, ""), style="dim"))
        for name, note in sorted(self.notes.items()):  # not a stage: e.g. the remote cache
            if name not in self.running:
                table.add_row(Text("⇅", style="cyan"), Text(name), Text(""),
                              Text(note, style="dim"))
        table.add_row("", Text(f"{self.done}/{self.total} stages settled", style="dim"), "", "")
        return table

    def _write(self, line: str) -> None:
        with self._lock:
            self.console.print(line, markup=False, highlight=False)

    def started(self, stage_id: str, reason: str) -> None:
        self.running[stage_id] = time.monotonic()
        if self.verbose:
            self._write(f"run  {stage_id}  ({reason})")

    def note(self, stage_id: str, text: str) -> None:
        self.notes[stage_id] = text  # shown in the stage's live row
        if self.verbose:
            super().note(stage_id, text)

    def finished(self, outcome: Outcome) -> None:
        self.running.pop(outcome.stage_id, None)
        self.notes.pop(outcome.stage_id, None)
        super().finished(outcome)

    def close(self) -> None:
        self.live.stop()


def make_progress(total: int, *, quiet: bool, verbose: bool) -> PlainProgress:
    if sys.stderr.isatty() and not quiet:
        try:
            return LiveProgress(total, quiet=quiet, verbose=verbose)
        except ImportError:
            pass
    return PlainProgress(total, quiet=quiet, verbose=verbose)
