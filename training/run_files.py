"""The files of a run directory: checkpoint.pt (resume), model.pt (the calibrated best model,
for vae-export) and metrics.jsonl; written atomically and read back with clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vaeserve.common.manifest import Calibration
from vaeserve.training.config import TrainConfig
from vaeserve.training.model import VAE, build_model
from vaeserve.training.prepare import Prepared

CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"  # the full training state, for --resume
MODEL_FILE = "model.pt"  # the best model, calibrated, for vae-export
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """One JSON line per epoch."""
    with open(run_dir / METRICS_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint or model file of this CHECKPOINT_VERSION, or a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(
            f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a vaeserve checkpoint of version {CHECKPOINT_VERSION}")
    return state


def save_model(
    run_dir: Path,
    config: TrainConfig,
    prep: Prepared,
    model: VAE,
    calibration: Calibration,
    best_metrics: dict[str, Any],
) -> None:
    """Write model.pt: the weights, calibration and validation rows that vae-export needs."""
    save_atomic(
        {
            "checkpoint_version": CHECKPOINT_VERSION,
            "kind": "vaeserve-model",
            "config": config.to_dict(),
            "input_dim": prep.input_dim,
            "cond_dim": prep.cond_dim,
            "feature_names": prep.feature_names,
            "condition_classes": prep.classes,
            "model": model.state_dict(),
            "calibration": calibration.__dict__,
            "best_metrics": best_metrics,
            "val_x": prep.x_val,
            "val_c": prep.c_val,
            "torch_version": torch.__version__,
        },
        run_dir / MODEL_FILE,
    )


def load_model(run_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the calibrated best model from RUN_DIR/model.pt; clear errors when it is
    missing, truncated or of another version."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run vae-train first")
    state = load_checkpoint(path)
    if state.get("kind") != "vaeserve-model":
        raise ValueError(f"{path}: not a vaeserve model file")
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config, state["input_dim"], state["cond_dim"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
