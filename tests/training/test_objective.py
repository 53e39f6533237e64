"""beta, KL warm-up schedules and free bits change the objective as they should."""

from __future__ import annotations

import itertools

import pytest
import torch

from vaeserve.training.config import TrainConfig
from vaeserve.training.objective import beta_at, kl_term, loss


def test_beta_scales_the_kl_term() -> None:
    nll = torch.tensor([10.0, 12.0])
    kl = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # batch-mean KL = 3 nats
    assert float(loss(nll, kl, beta=0.0, free_bits=0.0)) == pytest.approx(11.0)
    assert float(loss(nll, kl, beta=1.0, free_bits=0.0)) == pytest.approx(14.0)
    assert float(loss(nll, kl, beta=4.0, free_bits=0.0)) == pytest.approx(23.0)


def test_free_bits_floor_each_dimension() -> None:
    kl = torch.tensor([[0.02, 2.0], [0.04, 4.0]])  # per-dim means 0.03 and 3.0
    assert float(kl_term(kl, 0.0)) == pytest.approx(3.03)
    assert float(kl_term(kl, 0.5)) == pytest.approx(3.5)  # first dim floored at 0.5
    # below the floor the gradient vanishes, so the optimiser stops squeezing that dimension
    kl_req = kl.clone().requires_grad_(True)
    kl_term(kl_req, 0.5).backward()
    assert torch.all(kl_req.grad[:, 0] == 0) and torch.all(kl_req.grad[:, 1] > 0)


def test_linear_warmup_rises_to_beta_then_stays() -> None:
    cfg = TrainConfig(beta=2.0, warmup="linear", warmup_epochs=4)
    betas = [beta_at(cfg, s, steps_per_epoch=10) for s in range(0, 80, 5)]
    assert betas[0] == 0.0
    assert all(a <= b for a, b in itertools.pairwise(betas))
    assert beta_at(cfg, 20, 10) == pytest.approx(1.0)
    assert beta_at(cfg, 40, 10) == beta_at(cfg, 79, 10) == 2.0


def test_cyclical_warmup_restarts_each_cycle() -> None:
    cfg = TrainConfig(beta=1.0, warmup="cyclical", epochs=40, cycles=4, cycle_ratio=0.5)
    spe = 10  # 400 steps, 4 cycles of 100
    assert beta_at(cfg, 0, spe) == 0.0
    assert beta_at(cfg, 25, spe) == pytest.approx(0.5)
    assert beta_at(cfg, 50, spe) == beta_at(cfg, 99, spe) == 1.0
    assert beta_at(cfg, 100, spe) == 0.0  # the next cycle starts over
    assert beta_at(cfg, 325, spe) == pytest.approx(0.5)


def test_no_warmup_is_constant_beta() -> None:
    cfg = TrainConfig(beta=0.7)
    assert {beta_at(cfg, s, 7) for s in range(100)} == {0.7}
