"""KServe v2 fixtures: our own inference stubs on the shared digits server, and tritonclient runs.

tritonclient lives in .venv-triton (its protobuf pin clashes with ours): tests run
tests/kserve/triton_driver.py there in a subprocess and read its JSON.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.server.helpers import loopback_channel
from vaeserve.proto.inference import grpc_service_pb2_grpc
from vaeserve.proto.vae.v1 import vae_pb2_grpc
from vaeserve.server import VaeServer

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
DRIVER = Path(__file__).with_name("triton_driver.py")


def kserve_stub_for(
    port: int,
) -> tuple[grpc.Channel, grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    """A channel and inference.GRPCInferenceService stub on 127.0.0.1:port."""
    channel = loopback_channel(port)
    return channel, grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def triton_python() -> Path:
    """.venv-triton's interpreter; the test fails (not skips) when it is missing."""
    if not TRITON_PYTHON.exists():
        pytest.fail(
            f"{TRITON_PYTHON} is missing: run scripts/bootstrap.sh to create .venv-triton "
            "(tritonclient[grpc] in its own environment; its protobuf<7 pin clashes with ours)"
        )
    return TRITON_PYTHON


class Triton:
    """Runs plans through triton_driver.py; `npy` saves arrays for the driver to read."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self._n = 0

    def npy(self, array: np.ndarray) -> str:
        """Save an array and return its path."""
        self._n += 1
        path = self.workdir / f"a{self._n}.npy"
        np.save(path, array)
        return str(path)

    def run(self, port: int, steps: list[dict[str, Any]], **plan: Any) -> list[Any]:
        """Run the steps against 127.0.0.1:port; returns one result per step."""
        full = {"url": f"127.0.0.1:{port}", "steps": steps, **plan}
        result = subprocess.run(
            [str(self.python), str(DRIVER)],
            input=json.dumps(full),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"triton_driver failed:\n{result.stderr}"
        return json.loads(result.stdout)["results"]


@pytest.fixture
def triton(triton_python: Path, tmp_path: Path) -> Triton:
    return Triton(triton_python, tmp_path)


@pytest.fixture(scope="session")
def kserve_server(digits_server: VaeServer) -> VaeServer:
    """The shared digits server (tests/conftest.py): it serves KServe v2 beside vae.v1."""
    return digits_server


@pytest.fixture(scope="session")
def kserve_stub(
    kserve_server: VaeServer,
) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with loopback_channel(kserve_server.port) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def vae_stub(digits_stub: vae_pb2_grpc.VaeServiceStub) -> vae_pb2_grpc.VaeServiceStub:
    """The shared digits server's vae.v1 stub, by the name KServe tests use."""
    return digits_stub


def digits_rows(n: int, seed: int = 0) -> np.ndarray:
    """n rows of 64 digit-like features (0..16)."""
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 64)).astype(np.float32)
