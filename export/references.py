"""What the manifest records about the validation rows for monitoring: each feature's mean
reconstruction NLL (the explain baseline) and the drift reference with its null."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vaeserve.common.manifest import DriftSpec, ExplainSpec
from vaeserve.export.drift_null import REPLICATES, SEED, WINDOW_SIZES, build_drift_spec
from vaeserve.training.model import VAE


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, np.float32))


@torch.no_grad()
def explain_spec(vae: VAE, x: np.ndarray, cond: np.ndarray | None) -> ExplainSpec:
    """Each feature's reconstruction NLL (the explainer's output) averaged over rows x."""
    per_feature, _ = vae.eval().explain(_tensor(x), _tensor(cond))
    return ExplainSpec(rows=len(x), baseline_nll=per_feature.double().mean(0).tolist())


@torch.no_grad()
def drift_spec(
    vae: VAE,
    x: np.ndarray,
    cond: np.ndarray | None,
    window_sizes: Sequence[int] = WINDOW_SIZES,
    replicates: int = REPLICATES,
    seed: int = SEED,
    method: str = "auto",
) -> DriftSpec:
    """The drift reference of rows x: their posteriors' Gaussian and the statistic's null."""
    mu, logvar = vae.eval().encode(_tensor(x), _tensor(cond))
    return build_drift_spec(mu.numpy(), logvar.numpy(), window_sizes, replicates, seed, method)
