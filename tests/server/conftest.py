"""Server fixtures: in-process servers on free loopback ports, stubs and reference sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Reference, stub_for
from tests.server.synth import write_synthetic_model
from vaeserve.proto.vae.v1 import vae_pb2_grpc
from vaeserve.server import ServerSettings, VaeServer, start_server


def local_settings(repo: Path, **kw: object) -> ServerSettings:
    """Settings for a test server: loopback, free port, CPU, two onnxruntime threads."""
    base: dict[str, object] = {
        "model_repo": repo,
        "host": "127.0.0.1",
        "port": 0,
        "device": "cpu",
        "intra_op_threads": 2,
        "poll_interval_s": 0,
    }
    base.update(kw)
    return ServerSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def digits_server(model_repo: Path) -> Iterator[VaeServer]:
    """One in-process server on `model_repo` (model digits v1), shared by read-only tests."""
    server = start_server(local_settings(model_repo))
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="session")
def digits_stub(digits_server: VaeServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    channel, stub = stub_for(digits_server.port)
    yield stub
    channel.close()


@pytest.fixture(scope="session")
def digits_ref(model_repo: Path) -> Reference:
    """onnxruntime sessions on digits v1's graphs, for numeric checks."""
    return Reference(model_repo / "digits" / "1")


@pytest.fixture(scope="session")
def synth_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic models: "plain" (12 features) and "cond" (8 features, 3 condition classes)."""
    repo = tmp_path_factory.mktemp("synth_repo")
    write_synthetic_model(repo, "plain", 1, input_dim=12, latent_dim=3, seed=1)
    write_synthetic_model(repo, "cond", 1, input_dim=8, latent_dim=2, cond_dim=3, seed=2)
    return repo


@pytest.fixture(scope="session")
def synth_server(synth_repo: Path) -> Iterator[VaeServer]:
    server = start_server(local_settings(synth_repo))
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="session")
def synth_stub(synth_server: VaeServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    channel, stub = stub_for(synth_server.port)
    yield stub
    channel.close()
