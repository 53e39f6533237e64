"""The training loop: seeded, resumable, early-stopped on validation negative ELBO.

`train` is the outline: per epoch `train_epoch` (optimiser steps) and `evaluate` (validation
metrics), then a checkpoint; `finish` calibrates and saves the best model.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeserve.common.calibration import fit_calibration
from vaeserve.training.config import TrainConfig
from vaeserve.training.model import VAE
from vaeserve.training.objective import beta_at, loss
from vaeserve.training.prepare import Prepared, prepare
from vaeserve.training.run_files import (
    CHECKPOINT_FILE,
    CURVES_FILE,
    MODEL_FILE,
    load_checkpoint,
    load_model,
    save_atomic,
    save_model,
    write_metrics,
)
from vaeserve.training.state import TrainingState

# prepare, load_model and the file names stay importable from here for export/ and benchmarks/
__all__ = [
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "PosteriorCollapseWarning",
    "TrainResult",
    "evaluate",
    "load_model",
    "prepare",
    "score_rows",
    "train",
    "train_epoch",
]

log = logging.getLogger("vaeserve.training")

COLLAPSE_GRACE_STEPS = 200  # no collapse warning mid-run before this many optimiser steps
ACTIVE_UNIT_THRESHOLD = 0.01  # Cov_x(E[z|x]) above this makes a unit active (Burda et al.)


class PosteriorCollapseWarning(UserWarning):
    """No latent dimension carries information about the input."""


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    epochs_run: int
    epoch_budget: int  # the epoch cap that applied (TrainConfig.budget)
    patience: int  # early-stopping patience in epochs that applied
    stopped_early: bool
    seconds: float
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train a VAE as `config` says, writing checkpoints, metrics, curves and the calibrated
    best model into config.run_dir. With resume, continue from run_dir's checkpoint."""
    config.validate()
    started = time.perf_counter()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    prep = prepare(config)
    state = TrainingState.start(config, prep)
    if resume:
        resume_from_checkpoint(state, run_dir, prep.fingerprint)
    steps_per_epoch = -(-len(prep.x_train) // config.batch_size)
    config = with_budget(config, steps_per_epoch, len(prep.x_train))
    collapse = CollapseWatch.for_run(config, steps_per_epoch)
    bar = progress_bar(config, state.epoch)
    stopped_early = False
    for epoch in range(state.epoch, config.epochs):
        if state.stopping.exhausted(config.patience):
            stopped_early = True
            break
        epoch_start = time.perf_counter()
        row = {
            "epoch": epoch + 1,
            **train_epoch(state, prep, config, steps_per_epoch),
            **evaluate(state.model, prep.x_val, prep.c_val, config.seed + 2),
        }
        row["seconds"] = time.perf_counter() - epoch_start
        collapse.check(row)
        state.record(row)
        save_atomic(state.checkpoint(config, prep.fingerprint), run_dir / CHECKPOINT_FILE)
        write_metrics(run_dir, state.history)
        show_epoch(bar, row)
    bar.close()
    best_metrics = finish(state, config, prep, run_dir)
    result = TrainResult(
        run_dir=run_dir,
        best_epoch=state.stopping.best_epoch,
        epochs_run=len(state.history),
        epoch_budget=config.epochs,
        patience=config.patience,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        best_metrics=best_metrics,
        history=state.history,
    )
    log.info(
        "trained %d epochs in %.1fs; best epoch %d: val -ELBO %.3f, KL %.3f, AU %d",
        result.epochs_run,
        result.seconds,
        result.best_epoch,
        best_metrics["val_neg_elbo"],
        best_metrics["val_kl"],
        best_metrics["active_units"],
    )
    return result


def resume_from_checkpoint(state: TrainingState, run_dir: Path, fingerprint: str) -> None:
    """Restore run_dir's checkpoint into `state`; refuse when it was trained on other data."""
    saved = load_checkpoint(run_dir / CHECKPOINT_FILE)
    if saved["fingerprint"] != fingerprint:
        raise ValueError(
            f"{run_dir}: the data differs from the data the checkpoint was trained on; "
            "resume with the same --data and selection, or start a new --run-dir"
        )
    state.restore(saved)
    log.info("resumed %s at epoch %d (step %d)", run_dir, state.epoch, state.step)


def with_budget(config: TrainConfig, steps_per_epoch: int, rows: int) -> TrainConfig:
    """`config` with the epoch cap and patience that apply (TrainConfig.budget) filled in:
    what runs, and what checkpoints and the model file save."""
    epochs, patience = config.budget(steps_per_epoch)
    log.info(
        "%d training rows in batches of %d: up to %d epochs, patience %d",
        rows,
        config.batch_size,
        epochs,
        patience,
    )
    return dataclasses.replace(config, epochs=epochs, patience=patience)


def train_epoch(
    state: TrainingState, prep: Prepared, config: TrainConfig, steps_per_epoch: int
) -> dict[str, Any]:
    """One pass over the training rows in a fresh shuffled order, one optimiser step per batch.
    Returns the step count after it, the last beta and the row-weighted mean loss,
    reconstruction NLL and KL."""
    model, n = state.model, len(prep.x_train)
    model.train()
    perm = torch.randperm(n, generator=state.shuffle_gen)
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    beta = config.beta
    for i in range(0, n, config.batch_size):
        idx = perm[i : i + config.batch_size]
        xb = prep.x_train[idx]
        cb = None if prep.c_train is None else prep.c_train[idx]
        eps = torch.randn(len(idx), config.latent_dim, generator=state.noise_gen)
        beta = beta_at(config, state.step, steps_per_epoch)
        nll, kl_dims, _ = model(xb, eps, cb)
        objective = loss(nll, kl_dims, beta, config.free_bits)
        state.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        state.optimizer.step()
        state.step += 1
        w = len(idx) / n
        sums["loss"] += objective.item() * w
        sums["recon"] += nll.detach().mean().item() * w
        sums["kl"] += kl_dims.detach().sum(1).mean().item() * w
    return {
        "step": state.step,
        "beta": beta,
        "train_loss": sums["loss"],
        "train_recon": sums["recon"],
        "train_kl": sums["kl"],
        "train_neg_elbo": sums["recon"] + sums["kl"],
    }


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, c: torch.Tensor | None, seed: int) -> dict[str, Any]:
    """Validation metrics: one-sample negative ELBO (fixed noise, so epochs compare), its
    reconstruction and KL parts, KL per dimension and active units."""
    model.eval()
    eps = torch.randn(x.shape[0], model.latent_dim, generator=torch.Generator().manual_seed(seed))
    nll, kl_dims, mu = model(x, eps, c)
    kl = kl_dims.sum(1)
    mu_var = mu.var(0, unbiased=False)
    return {
        "val_neg_elbo": float((nll + kl).mean()),
        "val_recon": float(nll.mean()),
        "val_kl": float(kl.mean()),
        "val_kl_per_dim": [float(v) for v in kl_dims.mean(0)],
        "active_units": int((mu_var > ACTIVE_UNIT_THRESHOLD).sum()),
        "mu_variance": [float(v) for v in mu_var],
    }


@dataclass
class CollapseWatch:
    """Warns once per run when an epoch ends with no active latent unit. A fresh network has
    none yet, so it waits `grace_steps` optimiser steps (small data sets take few per epoch)."""

    grace_steps: int
    warned: bool = False

    @classmethod
    def for_run(cls, config: TrainConfig, steps_per_epoch: int) -> CollapseWatch:
        """Grace: COLLAPSE_GRACE_STEPS, 5 epochs, or a linear warm-up, whichever is longest."""
        warmup = config.warmup_epochs if config.warmup == "linear" else 0
        return cls(max(COLLAPSE_GRACE_STEPS, max(5, warmup) * steps_per_epoch))

    def check(self, row: dict[str, Any]) -> None:
        if row["active_units"] == 0 and row["step"] >= self.grace_steps and not self.warned:
            self.warned = True
            message = (
                f"posterior collapse: no active latent units at epoch {row['epoch']} "
                f"(validation KL {row['val_kl']:.3g} nats); try --warmup cyclical, "
                "--free-bits 0.1 or a smaller --beta"
            )
            log.warning(message)
            warnings.warn(message, PosteriorCollapseWarning, stacklevel=3)  # train's caller


def progress_bar(config: TrainConfig, epochs_done: int) -> Any:
    """A tqdm bar over the epoch budget, shown only on a terminal when config.progress."""
    from tqdm.auto import tqdm

    show = config.progress and sys.stderr.isatty()
    return tqdm(
        total=config.epochs, initial=epochs_done, desc="train", unit="epoch", disable=not show
    )


def show_epoch(bar: Any, row: dict[str, Any]) -> None:
    bar.update(1)
    bar.set_postfix(
        val_nelbo=f"{row['val_neg_elbo']:.2f}",
        kl=f"{row['val_kl']:.2f}",
        au=row["active_units"],
        beta=f"{row['beta']:.2f}",
    )


def finish(
    state: TrainingState, config: TrainConfig, prep: Prepared, run_dir: Path
) -> dict[str, Any]:
    """Load the best weights, calibrate their scores on the validation split, save model.pt and
    the training curves; returns the best epoch's metrics."""
    state.model.load_state_dict(state.stopping.best_state)
    scores = score_rows(state.model, prep.x_val, prep.c_val)
    calibration = fit_calibration(scores, config.threshold_quantile, config.default_score)
    best_metrics = next(r for r in state.history if r["epoch"] == state.stopping.best_epoch)
    if best_metrics["active_units"] == 0:
        warnings.warn(
            "posterior collapse: the best model has no active latent units; its KL score "
            "carries no information",
            PosteriorCollapseWarning,
            stacklevel=3,  # train's caller
        )
    save_model(run_dir, config, prep, state.model, calibration, best_metrics)
    try:
        from vaeserve.training.plots import plot_curves

        plot_curves(state.history, run_dir / CURVES_FILE)
    except ImportError:  # matplotlib is optional at run time
        log.info("matplotlib not installed: no %s", CURVES_FILE)
    return best_metrics


@torch.no_grad()
def score_rows(model: VAE, x: torch.Tensor, c: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Deterministic per-row scores (the exported scorer's math): kl, recon_nll, neg_elbo."""
    model.eval()
    kl, _, nll, neg_elbo = model.score(x, c)
    return {"kl": kl.numpy(), "recon_nll": nll.numpy(), "neg_elbo": neg_elbo.numpy()}
