"""What only makes sense on this machine, kept apart from what a remote cache may share.

Shareable: stage records and blobs (`Store.get_record`, `Store.get_blob`): pure functions of a
stage key, the same on every machine. Machine-local, never pushed to a remote tier:

* the stat cache (`Store.stats`: path, size, mtime, inode → digest): this disk's paths;
* the last key each stage id had here (to explain why a stage runs again);
* records a remote cache answered with, kept so that the next build here can key the stages
  downstream of them without asking the remote again (a no-op stays free of requests);
* small values a running stage remembers under its key (an AI Hub job id), so an interrupted
  build resumes that job instead of submitting a new one. They are plain JSON files in a
  directory the executor hands the stage as data: a stage never opens the store.

The tables live in the same index database as the records (one SQLite file, nothing to
migrate); what keeps them local is that the remote tier is only ever given records and blobs.
"""

from __future__ import annotations

from pathlib import Path

from buildsys.store.index import Index
from buildsys.store.record import StageRecord, record_problem


class MachineState:
    def __init__(self, root: Path, index: Index) -> None:
        self.index = index
        self.memos = root / "machine" / "memo"

    def last_key(self, stage_id: str) -> str | None:
        return self.index.get_last_key(stage_id)

    def set_last_key(self, stage_id: str, stage_key: str) -> None:
        if self.index.get_last_key(stage_id) != stage_key:  # reads are cheaper than writes
            self.index.set_last_key(stage_id, stage_key)

    def seen_remote(self, stage_key: str) -> StageRecord | None:
        record = self.index.get_seen_remote(stage_key)
        return record if record is not None and record_problem(record, stage_key) is None \
            else None

    def remember_remote(self, stage_key: str, record: StageRecord) -> None:
        if self.index.get_seen_remote(stage_key) is None:
            self.index.set_seen_remote(stage_key, record)

    def forget_remote(self, stage_key: str) -> None:
        """Its blobs could not be had after all: ask the remote afresh next time."""
        self.index.forget_seen_remote_key(stage_key)

    def memo_dir(self, stage_key: str) -> Path:
        """Where a stage running under this key keeps what it remembers (made by the stage
        when it first remembers something: most stages never do)."""
        if len(stage_key) != 64 or not all(c in "0123456789abcdef" for c in stage_key):
            raise ValueError(f"not a stage key: {stage_key!r}")
        return self.memos / stage_key[:2] / stage_key
