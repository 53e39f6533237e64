"""The training objective: reconstruction NLL + beta * KL, with KL warm-up and free bits."""

from __future__ import annotations

import math

import torch

from vaeserve.training.config import TrainConfig


def beta_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """KL weight at optimiser step `step` (0-based).

    linear: rises from 0 to beta over warmup_epochs. cyclical (Fu et al. 2019): the run is cut
    into `cycles` equal cycles; within each, beta rises linearly over the first `cycle_ratio`
    of the cycle and then stays at beta.
    """
    if config.warmup == "none":
        return config.beta
    if config.warmup == "linear":
        ramp = max(1, config.warmup_epochs * steps_per_epoch)
        return config.beta * min(1.0, step / ramp)
    total = config.epochs * steps_per_epoch
    period = max(1, math.ceil(total / config.cycles))
    tau = (step % period) / period
    return config.beta * min(1.0, tau / config.cycle_ratio)


def kl_term(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Batch-mean KL summed over dimensions; with free bits each dimension's batch-mean KL
    is floored at `free_bits` nats so the optimiser stops pushing it below (Kingma et al.)."""
    per_dim = kl_per_dim.mean(0)
    if free_bits > 0:
        per_dim = per_dim.clamp(min=free_bits)
    return per_dim.sum()


def loss(
    nll: torch.Tensor, kl_per_dim: torch.Tensor, beta: float, free_bits: float
) -> torch.Tensor:
    """The minimised objective: mean NLL + beta * (free-bits) KL."""
    return nll.mean() + beta * kl_term(kl_per_dim, free_bits)
