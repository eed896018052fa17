"""Content-addressed blob store on the local disk: `cas/<d[:2]>/<digest>`, read-only files.

Every write goes to a temporary file in the same filesystem and is renamed into place, so a
reader never sees half a blob. A blob is ingested as a copy (a stage's scratch output may
still be written to), hashed while it is copied so the digest always describes the stored
bytes; it is handed out by hardlink where possible (no copy of large model files).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from buildsys.errors import StoreError
from buildsys.hashing import ALGORITHM, digest_file

_NUMBERS = itertools.count()  # next() on it is atomic under the GIL
_DIGEST = re.compile(r"[0-9a-f]{64}")
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_HOST = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())


def _replace_into(tmp: Path, final: Path) -> None:
    """rename(2) into a `cas/xx/` folder, making the folder the first time."""
    try:
        os.replace(tmp, final)
    except FileNotFoundError:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)


def owner_tag() -> str:
    """`~host~pid~`, put in the names of temporary files and directories in the store, so a
    later build can tell the debris of a dead process from the work of a live one."""
    return f"~{_HOST}~{os.getpid()}~"


def owner_is_dead(name: str) -> bool:
    parts = name.split("~")
    if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
        return False  # not ours to judge: another machine, or not a tagged name
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by another user
    return False


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cas = root / "cas"
        self._cas = str(self.cas)
        self.tmp = root / "tmp"

    def _path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise StoreError(f"not a blob digest: {digest!r}")
        return Path(f"{self._cas}/{digest[:2]}/{digest}")

    def path_of(self, digest: str) -> Path:
        """Where the blob lives; for the store's own checks (stat fingerprints) only."""
        return self._path(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        """Cheap presence check (no hashing): exists, and has the expected size if given."""
        try:
            st = self._path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def size(self, digest: str) -> int:
        return self._path(digest).stat().st_size

    def verify(self, digest: str) -> bool:
        """Re-hash the blob; False if missing or its bytes no longer match its name."""
        try:
            return digest_file(self._path(digest)) == digest
        except FileNotFoundError:
            return False

    def put_file(self, source: Path) -> str:
        """Store the file's bytes; returns their digest. The source is left in place."""
        tmp = self._fresh_tmp("blob")
        try:
            tmp, fd = self._create(tmp)
            hasher = hashlib.new(ALGORITHM)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            final = self._path(digest)
            if self.has(digest, source.stat().st_size) and self.verify(digest):
                return digest  # deduplicated: identical bytes are already stored
            os.chmod(tmp, READ_ONLY)
            _replace_into(tmp, final)
            return digest
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"disk full while storing {source.name} in {self.root}") from exc
            raise StoreError(f"cannot store {source.name} in {self.root}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _fresh_tmp(self, label: str) -> Path:
        """A name in `tmp/` no other thread or process uses: owner-tagged (host, pid) and
        numbered (cheaper than tempfile's random names; created with O_EXCL all the same)."""
        return Path(f"{self.tmp}/{label}{owner_tag()}{next(_NUMBERS)}")

    def _create(self, tmp: Path) -> tuple[Path, int]:
        """Create `tmp` (or, if a dead namesake left it behind, a fresh name): (name, fd)."""
        while True:
            try:
                return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:  # the first blob, or `tmp/` was removed meanwhile
                self.tmp.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                tmp = self._fresh_tmp("blob")

    def new_tmp(self, label: str) -> Path:
        """A fresh temporary file name in the store's filesystem (owner-tagged, so a killed
        build's leftovers are swept)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=f"{label}{owner_tag()}")
        os.close(fd)
        return Path(name)

    def adopt(self, tmp: Path, digest: str) -> None:
        """Move a temporary file whose bytes were just verified to hash to `digest` into
        place (same filesystem: no copy)."""
        final = self._path(digest)
        try:
            os.chmod(tmp, READ_ONLY)
            _replace_into(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot store blob {digest[:12]} in {self.root}: "
                             f"{exc.strerror or exc}") from exc

    def materialise(self, digest: str, dest: Path, *, verify: bool = True) -> None:
        """Place the blob at `dest` (hardlink, or a read-only copy across filesystems)."""
        source = self._path(digest)
        if verify and not self.verify(digest):
            raise StoreError(f"blob {digest[:12]} is missing or corrupt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, READ_ONLY)
        os.replace(tmp, dest)
        # rename(2) does nothing when both names are links of one file (another build placed
        # the same blob there meanwhile): the temporary name would stay behind.
        tmp.unlink(missing_ok=True)

    def is_materialised(self, digest: str, dest: Path) -> bool:
        """True when `dest` is a hardlink of the blob (same inode): nothing to do, no hashing."""
        try:
            a, b = dest.stat(), self._path(digest).stat()
        except FileNotFoundError:
            return False
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(digest).unlink()

    def digests(self) -> Iterator[str]:
        if not self.cas.is_dir():
            return
        for sub in sorted(self.cas.iterdir()):
            for blob in sorted(sub.iterdir()):
                yield blob.name

    def total_size(self) -> int:
        return sum(self.size(d) for d in self.digests())
