"""`vae-train`: a thin command line over vaeserve.training.train."""

from __future__ import annotations

import json
import logging

import click

from vaeserve.common.scores import SCORE_NAMES
from vaeserve.training.config import TrainConfig
from vaeserve.training.data import DataError
from vaeserve.training.loop import train

D = TrainConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--data",
    default=D.data,
    help="builtin:digits|digits784|breast_cancer, or a .csv/.parquet/.npy/.npz file.",
)
@click.option("--run-dir", default=D.run_dir, help="Where checkpoints, metrics and curves go.")
@click.option(
    "--columns", default=None, help="Comma-separated feature columns (default: all numeric)."
)
@click.option(
    "--label-column", default=None, help="Label column: for --normal-label or --condition-on-label."
)
@click.option("--id-column", default=None, help="Row id column; never a feature.")
@click.option(
    "--normal-label", default=None, help="Train only on rows with this label (one-class)."
)
@click.option("--condition-on-label", is_flag=True, help="Conditional VAE on the one-hot label.")
@click.option("--drop-invalid", is_flag=True, help="Drop rows holding NaN/inf instead of failing.")
@click.option("--val-fraction", default=D.val_fraction, type=float)
@click.option(
    "--hidden", default=",".join(map(str, D.hidden)), help="Hidden layer sizes, e.g. 256,128."
)
@click.option("--latent", "latent_dim", default=D.latent_dim, type=int, help="Latent dimensions.")
@click.option("--likelihood", default=D.likelihood, type=click.Choice(["gaussian", "bernoulli"]))
@click.option(
    "--gaussian-variance", default=D.gaussian_variance, type=click.Choice(["learned", "fixed"])
)
@click.option(
    "--fixed-std",
    default=D.fixed_std,
    type=float,
    help="Decoder std (standardised units) when fixed.",
)
@click.option(
    "--logvar-min", default=D.logvar_min, type=float, help="Posterior log-variance floor."
)
@click.option(
    "--logvar-max", default=D.logvar_max, type=float, help="Posterior log-variance ceiling."
)
@click.option("--beta", default=D.beta, type=float, help="KL weight.")
@click.option("--warmup", default=D.warmup, type=click.Choice(["none", "linear", "cyclical"]))
@click.option("--warmup-epochs", default=D.warmup_epochs, type=int, help="Linear warm-up length.")
@click.option("--cycles", default=D.cycles, type=int, help="Cyclical schedule: cycles per run.")
@click.option("--free-bits", default=D.free_bits, type=float, help="Per-dimension KL floor (nats).")
@click.option(
    "--epochs",
    default=None,
    type=int,
    help="Epoch cap [default: enough for 2000 optimiser steps, at least 200].",
)
@click.option("--batch-size", default=D.batch_size, type=int)
@click.option("--lr", default=D.lr, type=float)
@click.option(
    "--patience",
    default=None,
    type=int,
    help="Early-stopping patience in epochs; 0 disables [default: 100 steps, at least 20].",
)
@click.option("--seed", default=D.seed, type=int)
@click.option("--threads", default=None, type=int, help="torch CPU threads.")
@click.option("--threshold-quantile", default=D.threshold_quantile, type=float)
@click.option("--default-score", default=D.default_score, type=click.Choice(SCORE_NAMES))
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/checkpoint.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(columns: str | None, hidden: str, resume: bool, quiet: bool, **options: object) -> None:
    """Train a VAE and write RUN_DIR/model.pt (calibrated), metrics.jsonl and curves.png."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TrainConfig(
            columns=columns.split(",") if columns else None,
            hidden=[int(h) for h in hidden.split(",") if h],
            progress=not quiet,
            **options,  # type: ignore[arg-type]
        )
        result = train(config, resume=resume)
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    m = result.best_metrics
    summary = {
        "run_dir": str(result.run_dir),
        "epochs_run": result.epochs_run,
        "epoch_budget": result.epoch_budget,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
        "val_neg_elbo": round(m["val_neg_elbo"], 4),
        "val_recon": round(m["val_recon"], 4),
        "val_kl": round(m["val_kl"], 4),
        "active_units": m["active_units"],
    }
    click.echo(json.dumps(summary))


if __name__ == "__main__":
    main()
