"""Server fixtures: reference sessions and a server on synthetic models. The shared digits
server and stub (`digits_server`, `digits_stub`) live in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import server_settings, serving, vae_stub_on
from tests.server.helpers import Reference
from tests.server.synth import write_synthetic_model
from vaeserve.proto.vae.v1 import vae_pb2_grpc
from vaeserve.server import VaeServer

local_settings = server_settings  # the name server and KServe tests import


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
    """One server on `synth_repo`, shared by the tests on synthetic models."""
    with serving(synth_repo) as server:
        yield server


@pytest.fixture(scope="session")
def synth_stub(synth_server: VaeServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    """A vae.v1 stub on `synth_server`."""
    with vae_stub_on(synth_server) as stub:
        yield stub
