"""The release table as Markdown: one row per packaged variant (size, size ratio to float,
latency and where it was measured, PSNR). Written by the release stage into dist/README.md,
by `--summary FILE.md` (CI's job summary), and reusable by any other report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADER = ("| variant | size | × smaller than float | latency (median) | where | PSNR |\n"
          "|---|---|---|---|---|---|")
NOTE = "Latency on the host CPU or the HTP simulator is not phone latency."


def human_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def release_rows_markdown(rows: list[dict[str, Any]]) -> str:
    """The table: header and one line per row of the release index (dist/index.json)."""
    lines = [HEADER]
    for r in rows:
        latency = r.get("latency_ms") or {}
        median = f"{latency['median']:.2f} ms" if latency.get("median") is not None else "–"
        psnr = ", ".join(f"{v:.1f} dB" for v in (r.get("psnr_db") or {}).values()) or "–"
        ratio = f"{r['size_ratio_vs_float']:.2f}×" if "size_ratio_vs_float" in r else "–"
        lines.append(f"| {_cell(r['id'])} | {human_size(r['model_bytes'])} | {ratio} | "
                     f"{median} | {_cell(r.get('latency_where') or '–')} | {psnr} |")
    return "\n".join(lines)


def release_markdown(recipe: str, rows: list[dict[str, Any]]) -> str:
    """dist/README.md: title, table, the note on where latency was measured, and the
    accuracy notes (task metrics, the rung `auto` chose, the most sensitive layers) if any."""
    accuracy = accuracy_markdown(rows)
    return (f"# Release: {recipe}\n\n{release_rows_markdown(rows)}\n\n{NOTE}\n"
            + (f"\n## Accuracy\n\n{accuracy}\n" if accuracy else ""))


def accuracy_markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        notes = []
        task = r.get("task_metrics")
        if task:
            notes.append(", ".join(f"{k} {v:.4f} (fp32 {task['fp32'][k]:.4f})"
                                   for k, v in task["variant"].items()))
        choice = r.get("quantization_choice")
        if choice:
            notes.append(f"auto chose **{choice['chosen']}** of {len(choice['rungs'])} rungs "
                         f"(budget {choice['budget']}; table: `{choice['file']}`)")
        sensitivity = r.get("sensitivity")
        if sensitivity:
            worst = ", ".join(f"{w['tensor']} ({w['sqnr_db']:.1f} dB)"
                              for w in sensitivity["layers"][:3])
            notes.append(f"most sensitive layers: {worst} (`{sensitivity['file']}`)")
        if notes:
            lines.append(f"- {_cell(r['id'])}: " + "; ".join(notes))
    return "\n".join(lines)


def build_summary_markdown(recipe: str, index_file: Path | None, build_line: str) -> str:
    """What `--summary` writes: the build's one-line result and the release table, if the
    recipe has a release index and it was built."""
    lines = [f"## modelbuild: {recipe}", "", build_line, ""]
    rows = None
    if index_file is not None:
        try:
            rows = json.loads(index_file.read_text(encoding="utf-8"))["variants"]
        except (OSError, ValueError, KeyError, TypeError):
            rows = None
    if rows:
        lines += [release_rows_markdown(rows), "", NOTE, ""]
    else:
        lines += ["No release index in this build.", ""]
    return "\n".join(lines)
