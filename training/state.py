"""What a run carries from epoch to epoch (model, optimiser, random streams, progress, the best
model so far) and its round trip through checkpoint.pt for --resume."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from vaeserve.training.config import TrainConfig
from vaeserve.training.model import VAE, build_model
from vaeserve.training.prepare import Prepared
from vaeserve.training.run_files import CHECKPOINT_VERSION


@dataclass
class EarlyStopping:
    """The best validation negative ELBO so far, its epoch and weights, and how many epochs
    have passed without beating it."""

    best_state: dict[str, torch.Tensor]
    best_value: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int, model: VAE) -> None:
        """Keep the model's weights if `value` beats the best, else count a bad epoch."""
        if value < self.best_value:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1

    def exhausted(self, patience: int) -> bool:
        """True when `patience` epochs (0: never) passed without improvement."""
        return bool(patience) and self.bad_epochs >= patience


@dataclass
class TrainingState:
    """Everything an epoch changes and a checkpoint restores."""

    model: VAE
    optimizer: torch.optim.Optimizer
    shuffle_gen: torch.Generator  # batch order
    noise_gen: torch.Generator  # reparameterisation noise
    stopping: EarlyStopping
    epoch: int = 0  # epochs done
    step: int = 0  # optimiser steps done
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, config: TrainConfig, prep: Prepared) -> TrainingState:
        """A fresh model and optimiser; config.seed fixes the initial weights (drawn from
        torch's global generator) and seeds the shuffle and noise streams."""
        torch.manual_seed(config.seed)
        model = build_model(config, prep.input_dim, prep.cond_dim)
        model.set_normalisation(prep.mean, prep.scale)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        return cls(
            model,
            optimizer,
            shuffle_gen=torch.Generator().manual_seed(config.seed),
            noise_gen=torch.Generator().manual_seed(config.seed + 1),
            stopping=EarlyStopping(best_state=copy.deepcopy(model.state_dict())),
        )

    def record(self, row: dict[str, Any]) -> None:
        """Close an epoch: keep its metrics row and let early stopping see its validation score."""
        self.history.append(row)
        self.epoch = row["epoch"]
        self.stopping.update(row["val_neg_elbo"], row["epoch"], self.model)

    def checkpoint(self, config: TrainConfig, fingerprint: str) -> dict[str, Any]:
        """The contents of checkpoint.pt; `fingerprint` identifies the training data."""
        return {
            "checkpoint_version": CHECKPOINT_VERSION,
            "config": config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "best_value": self.stopping.best_value,
            "best_epoch": self.stopping.best_epoch,
            "bad_epochs": self.stopping.bad_epochs,
            "best_state": self.stopping.best_state,
            "history": self.history,
            "fingerprint": fingerprint,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint() dict exactly where it left off."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.shuffle_gen.set_state(saved["shuffle_gen"])
        self.noise_gen.set_state(saved["noise_gen"])
        self.epoch, self.step = saved["epoch"], saved["step"]
        self.stopping = EarlyStopping(
            best_state=saved["best_state"],
            best_value=saved["best_value"],
            best_epoch=saved["best_epoch"],
            bad_epochs=saved["bad_epochs"],
        )
        self.history = saved["history"]
