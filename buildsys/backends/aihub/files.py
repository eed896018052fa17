"""Files written so that no half-written artifact is ever visible under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path, PurePosixPath


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_into(src: Path, final: Path, scratch: Path) -> None:
    """Move ``src`` to ``final`` (same file system); an old ``final`` goes to ``scratch``."""
    if final.is_symlink() or final.is_file():
        if src.is_dir():
            final.unlink()
    elif final.is_dir():
        os.replace(final, scratch / f".previous-{final.name}")
    os.replace(src, final)


def artifact_suffix(name: str) -> str:
    suffixes = PurePosixPath(name).suffixes
    if suffixes and suffixes[-1].lower() == ".zip":
        return "".join(suffixes[-2:]) if len(suffixes) >= 2 else ".zip"
    return suffixes[-1] if suffixes else ""
