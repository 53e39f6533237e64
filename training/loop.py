"""The training loop: seeded, resumable, early-stopped on validation negative ELBO."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeserve.common.calibration import fit_calibration
from vaeserve.training import data as data_mod
from vaeserve.training.config import TrainConfig
from vaeserve.training.model import VAE
from vaeserve.training.objective import beta_at, loss

log = logging.getLogger("vaeserve.training")

CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"  # the full training state, for --resume
MODEL_FILE = "model.pt"  # the best model, calibrated, for vae-export
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
COLLAPSE_GRACE_STEPS = 200  # no collapse warning mid-run before this many optimiser steps
ACTIVE_UNIT_THRESHOLD = 0.01  # Cov_x(E[z|x]) above this makes a unit active (Burda et al.)


class PosteriorCollapseWarning(UserWarning):
    """No latent dimension carries information about the input."""


@dataclass
class Prepared:
    """Tensors and metadata of a run's train and validation splits."""

    x_train: torch.Tensor
    x_val: torch.Tensor
    c_train: torch.Tensor | None
    c_val: torch.Tensor | None
    feature_names: list[str]
    classes: list[str] | None
    mean: torch.Tensor
    scale: torch.Tensor
    fingerprint: str


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


def prepare(config: TrainConfig) -> Prepared:
    """Load, validate, select and split the data; fit standardisation on the train split."""
    ds = data_mod.load_dataset(config.data, config.columns, config.label_column, config.id_column)
    ds = data_mod.check_finite(ds, config.drop_invalid)
    if config.normal_label is not None:
        ds = data_mod.select_label(ds, config.normal_label)
    if len(ds) < 4:
        raise data_mod.DataError(f"{len(ds)} rows are too few to train on")
    train_ds, val_ds = data_mod.split(ds, config.val_fraction, config.seed)
    if config.likelihood == "bernoulli" and (ds.x.min() < 0 or ds.x.max() > 1):
        raise data_mod.DataError(
            "the bernoulli likelihood needs features in [0, 1]; rescale the data or use "
            "--likelihood gaussian"
        )
    classes = None
    c_train = c_val = None
    if config.condition_on_label:
        if ds.labels is None:
            raise data_mod.DataError("--condition-on-label needs a label column (--label-column)")
        classes = sorted(set(ds.labels.tolist()))
        lookup = {c: i for i, c in enumerate(classes)}
        eye = np.eye(len(classes), dtype=np.float32)
        c_train = torch.from_numpy(eye[[lookup[v] for v in train_ds.labels]])
        c_val = torch.from_numpy(eye[[lookup[v] for v in val_ds.labels]])
    x_train = torch.from_numpy(np.ascontiguousarray(train_ds.x, dtype=np.float32))
    mean = x_train.mean(0)
    std = x_train.std(0, unbiased=False)
    scale = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features pass as is
    fingerprint = hashlib.sha256(train_ds.x.tobytes() + val_ds.x.tobytes()).hexdigest()
    return Prepared(
        x_train,
        torch.from_numpy(np.ascontiguousarray(val_ds.x)),
        c_train,
        c_val,
        ds.feature_names,
        classes,
        mean,
        scale,
        fingerprint,
    )


def build_model(config: TrainConfig, input_dim: int, cond_dim: int) -> VAE:
    return VAE(
        input_dim,
        config.latent_dim,
        list(config.hidden),
        cond_dim=cond_dim,
        likelihood=config.likelihood,
        learned_variance=config.gaussian_variance == "learned",
        fixed_std=config.fixed_std,
        logvar_min=config.logvar_min,
        logvar_max=config.logvar_max,
        recon_logvar_min=config.recon_logvar_min,
    )


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


@torch.no_grad()
def score_rows(model: VAE, x: torch.Tensor, c: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Deterministic per-row scores (the exported scorer's math): kl, recon_nll, neg_elbo."""
    model.eval()
    kl, _, nll, neg_elbo = model.score(x, c)
    return {"kl": kl.numpy(), "recon_nll": nll.numpy(), "neg_elbo": neg_elbo.numpy()}


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(run_dir / METRICS_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _load_checkpoint(path: Path) -> dict[str, Any]:
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
    cond_dim = 0 if prep.classes is None else len(prep.classes)

    torch.manual_seed(config.seed)
    model = build_model(config, prep.x_train.shape[1], cond_dim)
    model.set_normalisation(prep.mean, prep.scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    start_epoch, step, best_value, best_epoch, bad_epochs = 0, 0, float("inf"), -1, 0
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    history: list[dict[str, Any]] = []

    if resume:
        state = _load_checkpoint(run_dir / CHECKPOINT_FILE)
        if state["fingerprint"] != prep.fingerprint:
            raise ValueError(
                f"{run_dir}: the data differs from the data the checkpoint was trained on; "
                "resume with the same --data and selection, or start a new --run-dir"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle_gen.set_state(state["shuffle_gen"])
        noise_gen.set_state(state["noise_gen"])
        start_epoch, step = state["epoch"], state["step"]
        best_value, best_epoch, bad_epochs = (
            state["best_value"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        best_state, history = state["best_state"], state["history"]
        log.info("resumed %s at epoch %d (step %d)", run_dir, start_epoch, step)

    n = prep.x_train.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    epochs, patience = config.budget(steps_per_epoch)
    config = dataclasses.replace(config, epochs=epochs, patience=patience)  # what runs, saved
    log.info(
        "%d training rows in batches of %d: up to %d epochs, patience %d",
        n,
        config.batch_size,
        epochs,
        patience,
    )
    show = config.progress and sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, initial=start_epoch, desc="train", unit="epoch", disable=not show)
    stopped_early = False
    epoch = start_epoch
    warned = False
    for epoch in range(start_epoch, epochs):
        if patience and bad_epochs >= patience:
            stopped_early = True
            break
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        beta = config.beta
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            xb = prep.x_train[idx]
            cb = None if prep.c_train is None else prep.c_train[idx]
            eps = torch.randn(len(idx), config.latent_dim, generator=noise_gen)
            beta = beta_at(config, step, steps_per_epoch)
            nll, kl_dims, _ = model(xb, eps, cb)
            objective = loss(nll, kl_dims, beta, config.free_bits)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            step += 1
            w = len(idx) / n
            sums["loss"] += objective.item() * w
            sums["recon"] += nll.detach().mean().item() * w
            sums["kl"] += kl_dims.detach().sum(1).mean().item() * w
        metrics = evaluate(model, prep.x_val, prep.c_val, config.seed + 2)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "beta": beta,
            "train_loss": sums["loss"],
            "train_recon": sums["recon"],
            "train_kl": sums["kl"],
            "train_neg_elbo": sums["recon"] + sums["kl"],
            **metrics,
            "seconds": time.perf_counter() - epoch_start,
        }
        # a fresh network has no active units yet: judge collapse only after enough
        # optimiser steps (small data sets take few per epoch) and after a linear warm-up
        warmup = config.warmup_epochs if config.warmup == "linear" else 0
        grace_steps = max(COLLAPSE_GRACE_STEPS, max(5, warmup) * steps_per_epoch)
        if metrics["active_units"] == 0 and step >= grace_steps and not warned:
            warned = True
            message = (
                f"posterior collapse: no active latent units at epoch {epoch + 1} "
                f"(validation KL {metrics['val_kl']:.3g} nats); try --warmup cyclical, "
                "--free-bits 0.1 or a smaller --beta"
            )
            log.warning(message)
            warnings.warn(message, PosteriorCollapseWarning, stacklevel=2)
        history.append(row)
        if metrics["val_neg_elbo"] < best_value:
            best_value, best_epoch, bad_epochs = metrics["val_neg_elbo"], epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        _save_atomic(
            {
                "checkpoint_version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "epoch": epoch + 1,
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle_gen": shuffle_gen.get_state(),
                "noise_gen": noise_gen.get_state(),
                "best_value": best_value,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "best_state": best_state,
                "history": history,
                "fingerprint": prep.fingerprint,
            },
            run_dir / CHECKPOINT_FILE,
        )
        _write_metrics(run_dir, history)
        bar.update(1)
        bar.set_postfix(
            val_nelbo=f"{metrics['val_neg_elbo']:.2f}",
            kl=f"{metrics['val_kl']:.2f}",
            au=metrics["active_units"],
            beta=f"{beta:.2f}",
        )
    bar.close()

    model.load_state_dict(best_state)
    scores = score_rows(model, prep.x_val, prep.c_val)
    calibration = fit_calibration(scores, config.threshold_quantile, config.default_score)
    best_metrics = next(r for r in history if r["epoch"] == best_epoch)
    if best_metrics["active_units"] == 0:
        warnings.warn(
            "posterior collapse: the best model has no active latent units; its KL score "
            "carries no information",
            PosteriorCollapseWarning,
            stacklevel=2,
        )
    _save_atomic(
        {
            "checkpoint_version": CHECKPOINT_VERSION,
            "kind": "vaeserve-model",
            "config": config.to_dict(),
            "input_dim": int(prep.x_train.shape[1]),
            "cond_dim": cond_dim,
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
    try:
        from vaeserve.training.plots import plot_curves

        plot_curves(history, run_dir / CURVES_FILE)
    except ImportError:  # matplotlib is optional at run time
        log.info("matplotlib not installed: no %s", CURVES_FILE)
    result = TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        epochs_run=len(history),
        epoch_budget=epochs,
        patience=patience,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        best_metrics=best_metrics,
        history=history,
    )
    log.info(
        "trained %d epochs in %.1fs; best epoch %d: val -ELBO %.3f, KL %.3f, AU %d",
        result.epochs_run,
        result.seconds,
        best_epoch,
        best_metrics["val_neg_elbo"],
        best_metrics["val_kl"],
        best_metrics["active_units"],
    )
    return result


def load_model(run_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the calibrated best model from RUN_DIR/model.pt; clear errors when it is
    missing, truncated or of another version."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run vae-train first")
    state = _load_checkpoint(path)
    if state.get("kind") != "vaeserve-model":
        raise ValueError(f"{path}: not a vaeserve model file")
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config, state["input_dim"], state["cond_dim"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
