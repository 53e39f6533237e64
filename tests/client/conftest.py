"""Client fixtures: a client on the shared digits server, the digits rows, and `vae-server` as a
child process that tests kill and restart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import server_settings as server_settings  # re-exported for client tests
from vaeserve.client import VaeClient
from vaeserve.server import VaeServer

VENV_BIN = Path(sys.executable).parent
MODEL = "digits"


@pytest.fixture(scope="session")
def server(digits_server: VaeServer) -> VaeServer:
    """The shared digits server (tests/conftest.py), by the name client tests use."""
    return digits_server


@pytest.fixture(scope="session")
def target(server: VaeServer) -> str:
    """HOST:PORT of the shared server."""
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def client(target: str) -> Iterator[VaeClient]:
    """A VaeClient on the shared server."""
    with VaeClient(target) as c:
        yield c


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, list[str], np.ndarray]:
    """scikit-learn's 8x8 digits (rows float32 [1797, 64], feature names, labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    return bunch.data.astype(np.float32), names, bunch.target.astype(str)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`vae-server` as a child process, killable and restartable on the same port."""

    def __init__(self, repo: Path, port: int, log: Path) -> None:
        self.repo, self.port, self.log = repo, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start and wait until a health check answers SERVING."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "vae-server"),
                    "--model-repo",
                    str(self.repo),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--device",
                    "cpu",
                    "--intra-op-threads",
                    "1",
                    "--poll-interval-s",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with VaeClient(f"127.0.0.1:{self.port}", retries=0, timeout=5) as c:
            deadline = time.monotonic() + 120
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vae-server exited: {self.log.read_text()[-2000:]}")
                try:
                    if c.health() == "SERVING":
                        return self
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the abrupt loss a client must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def client_env(**extra: str) -> dict[str, str]:
    """Environment for a vae-client subprocess (no VAECLIENT_* leaking in from outside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAECLIENT_")}
    env.update(extra)
    return env
