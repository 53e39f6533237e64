"""The typed training settings: one object that the CLI, the API and checkpoints share."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from vaeserve.common.scores import DEFAULT_SCORE, ScoreName

Likelihood = Literal["gaussian", "bernoulli"]
Warmup = Literal["none", "linear", "cyclical"]

# the automatic training budget (TrainConfig.budget)
MIN_STEPS = 2000
MIN_EPOCHS = 200
PATIENCE_STEPS = 100
PATIENCE_EPOCHS = 20


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved in every checkpoint and manifest."""

    data: str = "builtin:digits"
    run_dir: str = "runs/digits"
    # data selection
    columns: list[str] | None = None
    label_column: str | None = None
    id_column: str | None = None
    normal_label: str | None = None  # train only on rows whose label equals this
    condition_on_label: bool = False  # conditional VAE on the one-hot label
    drop_invalid: bool = False
    val_fraction: float = 0.2
    # model
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    latent_dim: int = 8
    likelihood: Likelihood = "gaussian"
    gaussian_variance: Literal["learned", "fixed"] = "learned"
    fixed_std: float = 1.0  # decoder std in standardised units when gaussian_variance=fixed
    logvar_min: float = -8.0  # posterior log-variance clamp (minimum-variance clip)
    logvar_max: float = 8.0
    recon_logvar_min: float = -4.0  # floor of the learned decoder log-variance
    # objective
    beta: float = 1.0
    warmup: Warmup = "none"
    warmup_epochs: int = 10  # linear: epochs to reach beta
    cycles: int = 4  # cyclical: number of cycles over the whole run (Fu et al. 2019)
    cycle_ratio: float = 0.5  # cyclical: fraction of each cycle spent increasing beta
    free_bits: float = 0.0  # per-dimension KL floor in nats (Kingma et al. 2016)
    # optimisation
    # None: sized by optimiser steps, so small data sets (few steps per epoch) still train
    # (see TrainConfig.budget)
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = None  # early stopping on validation -ELBO; 0 disables; None: auto
    seed: int = 0
    threads: int | None = None
    # calibration
    threshold_quantile: float = 0.99
    default_score: ScoreName = DEFAULT_SCORE
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def budget(self, steps_per_epoch: int) -> tuple[int, int]:
        """(epoch cap, patience in epochs): the configured values, or where None, enough epochs
        for MIN_STEPS (at least MIN_EPOCHS) and patience for PATIENCE_STEPS (at least
        PATIENCE_EPOCHS). One-class splits of ~100 rows take one step per epoch: a fixed 200
        epochs left most of them still improving on validation."""
        epochs = self.epochs or max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
        patience = self.patience
        if patience is None:
            patience = max(PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps_per_epoch))
        return epochs, patience

    def validate(self) -> None:
        """Raise ValueError for settings that cannot train."""
        checks = [
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (all(h >= 1 for h in self.hidden), "hidden sizes must be >= 1"),
            (0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)"),
            (self.beta >= 0.0, "beta must be >= 0"),
            (self.free_bits >= 0.0, "free_bits must be >= 0"),
            (self.logvar_min < self.logvar_max, "logvar_min must be below logvar_max"),
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.patience is None or self.patience >= 0, "patience must be >= 0"),
            (self.cycles >= 1 and 0.0 < self.cycle_ratio <= 1.0, "cycles >= 1, ratio in (0,1]"),
            (0.0 < self.threshold_quantile < 1.0, "threshold_quantile must be in (0, 1)"),
            (self.likelihood in ("gaussian", "bernoulli"), "likelihood: gaussian|bernoulli"),
            (self.warmup in ("none", "linear", "cyclical"), "warmup: none|linear|cyclical"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
