"""Shared fixtures: real models trained on bundled real data and exported to ONNX once per
session. Tests that change a model repository copy it first (see `fresh_repo`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vaeserve.export import export_model
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


@pytest.fixture
def fresh_repo(tmp_path: Path, model_repo: Path) -> Path:
    """A private copy of `model_repo` that a test may add versions to or break."""
    target = tmp_path / "repo"
    shutil.copytree(model_repo, target)
    return target
