"""Training curves as a PNG in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Negative ELBO, reconstruction, KL, beta and active units per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].plot(epochs, [r["train_neg_elbo"] for r in history], label="train")
    axes[0].plot(epochs, [r["val_neg_elbo"] for r in history], label="validation")
    axes[0].set_title("negative ELBO (nats)")
    axes[1].plot(epochs, [r["train_recon"] for r in history], label="train")
    axes[1].plot(epochs, [r["val_recon"] for r in history], label="validation")
    axes[1].set_title("reconstruction NLL (nats)")
    axes[2].plot(epochs, [r["train_kl"] for r in history], label="train")
    axes[2].plot(epochs, [r["val_kl"] for r in history], label="validation")
    axes[2].set_title("KL (nats)")
    axes[3].plot(epochs, [r["active_units"] for r in history], label="active units")
    twin = axes[3].twinx()
    twin.plot(epochs, [r["beta"] for r in history], color="gray", ls="--", label="beta")
    twin.set_ylabel("beta")
    axes[3].set_title("active units / beta")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
