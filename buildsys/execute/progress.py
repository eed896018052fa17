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
    """A rich live display: finished stages scroll above, running ones tick below.

    Every write to the terminal — a finished stage's line, a redraw of the running rows, a
    warning passing through rich's stderr redirect — renders and writes under one lock. rich
    renders into a per-thread buffer and writes it later, so a redraw by its own refresh
    thread could land after a line printed meanwhile, moving the cursor up by the old
    display's height: that erased finished lines and left a stale running row behind. Here no
    rich thread runs; a ticker of ours redraws under the same lock as every print.
    """

    TICK_S = 0.25

    def __init__(self, total: int, stream: TextIO = sys.stderr, **kwargs: Any) -> None:
        super().__init__(total, stream, **kwargs)
        from rich.console import Console
        from rich.live import Live

        class AtomicConsole(Console):
            """print = render + write, never interleaved with another thread's."""

            output_lock = threading.RLock()

            def print(self, *args: Any, **kw: Any) -> None:
                with self.output_lock:
                    super().print(*args, **kw)

        self.console = AtomicConsole(file=stream)
        self._lock = self.console.output_lock  # type: ignore[assignment]
        self.running: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.live = Live(console=self.console, auto_refresh=False, transient=True,
                         get_renderable=self._render)
        self._stopped = threading.Event()
        with self._lock:
            self.live.start()
        self._ticker = threading.Thread(target=self._tick, name="live-display", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(self.TICK_S):
            with self._lock:
                if not self._stopped.is_set():
                    self.live.refresh()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        # One terminal line per row (never wrapped), and never taller than the terminal: a
        # display that scrolls cannot be erased and redrawn in place.
        room = max(1, self.console.size.height - 2)
        rows = []
        for stage_id, started in sorted(self.running.items()):
            # Text cells, not markup: a line printed with markup off redraws this table too.
            rows.append((Text("⠿", style="cyan"), Text(stage_id),
                         Text(f"{now - started:5.0f} s", style="dim"),
                         Text(self.notes.get(stage_id, ""), style="dim")))
        for name, note in sorted(self.notes.items()):  # not a stage: e.g. the remote cache
            if name not in self.running:
                rows.append((Text("⇅", style="cyan"), Text(name), Text(""),
                             Text(note, style="dim")))
        if len(rows) > room:
            rows = [*rows[:room - 1], (Text(""), Text(f"… {len(rows) - room + 1} more",
                                                       style="dim"), Text(""), Text(""))]
        for row in rows:
            for cell in row:
                cell.no_wrap, cell.overflow = True, "ellipsis"
            table.add_row(*row)
        table.add_row("", Text(f"{self.done}/{self.total} stages settled", style="dim"), "", "")
        return table

    def _write(self, line: str) -> None:
        with self._lock:
            self.console.print(line, markup=False, highlight=False)

    def started(self, stage_id: str, reason: str) -> None:
        with self._lock:
            self.running[stage_id] = time.monotonic()
            if self.verbose:
                self._write(f"run  {stage_id}  ({reason})")

    def note(self, stage_id: str, text: str) -> None:
        with self._lock:
            self.notes[stage_id] = text  # shown in the stage's live row
            if self.verbose:
                super().note(stage_id, text)

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.running.pop(outcome.stage_id, None)
            self.notes.pop(outcome.stage_id, None)
            super().finished(outcome)  # a printed line redraws the rows; else the ticker

    def close(self) -> None:
        with self._lock:
            self._stopped.set()
            self.live.stop()
        self._ticker.join()


def make_progress(total: int, *, quiet: bool, verbose: bool) -> PlainProgress:
    if sys.stderr.isatty() and not quiet:
        try:
            return LiveProgress(total, quiet=quiet, verbose=verbose)
        except ImportError:
            pass
    return PlainProgress(total, quiet=quiet, verbose=verbose)
