"""Shared fixtures: real models trained on bundled real data and exported to ONNX once per
session, and the in-process servers on them that read-only tests share. Tests that change a
model repository copy it first (see `fresh_repo`); tests that need other server settings start
their own server from `server_settings`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server.helpers import loopback_channel
from tests.server.synth import write_synthetic_model
from vaeserve.export import export_model
from vaeserve.export.monitoring_figures import Exported, digits_with_test_split
from vaeserve.proto.vae.v1 import vae_pb2_grpc
from vaeserve.server import ServerSettings, VaeServer, start_server
from vaeserve.training import TrainConfig, train


def quick_config(run_dir: Path, **overrides: object) -> TrainConfig:
    """A small, fast digits run (seconds on two cores)."""
    settings: dict[str, object] = {
        "data": "builtin:digits",
        "run_dir": str(run_dir),
        "hidden": [64, 32],
        "latent_dim": 8,
        "epochs": 25,
        "batch_size": 64,
        "progress": False,
        "threads": 1,
    }
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A trained digits run (all ten digits, 64 features)."""
    return train(quick_config(tmp_path_factory.mktemp("runs") / "digits"))


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, digits_run) -> Path:
    """A model repository holding model "digits" version 1. Treat it as read-only."""
    repo = tmp_path_factory.mktemp("repo")
    export_model(digits_run.run_dir, repo, "digits")
    return repo


@pytest.fixture(scope="session")
def model_repo_784(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding model "digits784" version 1 (784 features, 28x28 digits)."""
    run = train(
        quick_config(
            tmp_path_factory.mktemp("runs") / "digits784",
            data="builtin:digits784",
            hidden=[128],
            latent_dim=20,
            epochs=3,
            batch_size=128,
        )
    )
    repo = tmp_path_factory.mktemp("repo784")
    export_model(run.run_dir, repo, "digits784")
    return repo


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """All ten digits with 539 seeded random rows held out from training and validation
    (`export.monitoring_figures.digits_with_test_split`): model "digits" version 1 in
    `model_dir.parents[1]`, and rows it never saw (`held_out`, `labels`) for the explanation
    and drift tests."""
    return digits_with_test_split(tmp_path_factory.mktemp("digits-split"))


@pytest.fixture
def fresh_repo(tmp_path: Path, model_repo: Path) -> Path:
    """A private copy of `model_repo` that a test may add versions to or break."""
    target = tmp_path / "repo"
    shutil.copytree(model_repo, target)
    return target


def server_settings(repo: Path, **overrides: object) -> ServerSettings:
    """Settings for an in-process test server on `repo`: loopback, a free port, CPU, one
    onnxruntime thread, no repository polling; keyword arguments override any of them."""
    settings: dict[str, object] = {
        "model_repo": repo,
        "host": "127.0.0.1",
        "port": 0,
        "device": "cpu",
        "intra_op_threads": 1,
        "poll_interval_s": 0,
    }
    settings.update(overrides)
    return ServerSettings(**settings)  # type: ignore[arg-type]


@contextmanager
def serving(repo: Path, **overrides: object) -> Iterator[VaeServer]:
    """A server on `repo` (see `server_settings`) for the length of the block."""
    server = start_server(server_settings(repo, **overrides))
    try:
        yield server
    finally:
        server.stop(grace=1.0)


@contextmanager
def vae_stub_on(server: VaeServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    """A vae.v1 stub on `server` for the length of the block."""
    with loopback_channel(server.port) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


@pytest.fixture(scope="session")
def digits_server(model_repo: Path) -> Iterator[VaeServer]:
    """The one server on `model_repo` (model digits v1, vae.v1 and KServe v2) that read-only
    server, client and KServe tests share."""
    with serving(model_repo) as server:
        yield server


@pytest.fixture(scope="session")
def digits_stub(digits_server: VaeServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    """A vae.v1 stub on `digits_server`."""
    with vae_stub_on(digits_server) as stub:
        yield stub


@pytest.fixture(scope="session")
def cond_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaeServer]:
    """A server holding only "cond": a synthetic conditional model (8 features, 3 classes), so
    requests that name no model reach it."""
    repo = tmp_path_factory.mktemp("cond_repo")
    write_synthetic_model(repo, "cond", 1, input_dim=8, latent_dim=2, cond_dim=3, seed=2)
    with serving(repo) as server:
        yield server
