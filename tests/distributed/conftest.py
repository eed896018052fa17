"""A real Dask cluster for the distributed tests: `dask scheduler` and two `dask worker`
processes (one advertising the HTP simulator) on 127.0.0.1, started once per session, with
the session's SeaweedFS server as the shared remote cache.

Tests that kill the scheduler start their own with `start_scheduler` / `start_worker`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.remote.conftest import CREDENTIALS

DASK = str(Path(sys.executable).with_name("dask"))
SIM_WORKER, PLAIN_WORKER = "sim", "plain"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What scheduler, workers and builds run with: this checkout's buildsys, one thread, the
    remote's test credentials (from the environment, as on a real cluster)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODELBUILD_CACHE_DIR",
                                                            "MODELBUILD_SCHEDULER")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **CREDENTIALS,
                # an unreachable scheduler is named after 3 s, not dask's default 30 s
                "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s", **(extra or {})})
    return env


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def start_scheduler(directory: Path, env: dict[str, str] | None = None
                    ) -> tuple[str, subprocess.Popen[bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                      "--no-dashboard"], directory / "scheduler.log", cluster_env(env))
    return f"tcp://127.0.0.1:{port}", process


def start_worker(address: str, directory: Path, name: str, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    local = directory / f"worker-{name}"
    local.mkdir(parents=True, exist_ok=True)
    return _start([DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                   "--no-dashboard", "--name", name, "--local-directory", str(local), *extra],
                  directory / f"worker-{name}.log", cluster_env(env))


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_for_workers(address: str, names: set[str], timeout: float = 60) -> dict[str, str]:
    """Name → address of the named workers, once all of them have joined."""
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout=30, set_as_default=False) as client:
        while True:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            joined = {w["name"]: a for a, w in workers.items() if w["name"] in names}
            if set(joined) == names:
                return joined
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {names - set(joined)} did not join {address}")
            time.sleep(0.1)


@dataclass
class DaskCluster:
    address: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def worker_pid(self, name: str) -> int:
        """The pid of the named worker's worker process (not its nanny)."""
        with self.client() as client:
            address = wait_for_workers(self.address, {name})[name]
            return int(client.run(os.getpid, workers=[address])[address])


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    directory = tmp_path_factory.mktemp("dask")
    address, scheduler = start_scheduler(directory)
    cluster = DaskCluster(address, directory, [scheduler])
    try:
        cluster.processes.append(start_worker(address, directory, PLAIN_WORKER))
        cluster.processes.append(start_worker(address, directory, SIM_WORKER,
                                              "--resources", "htp_sim=1"))
        wait_for_workers(address, {PLAIN_WORKER, SIM_WORKER})
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            kill_group(process)
