"""The KL closed forms against Monte Carlo estimates of their definition."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeserve.training.kl import kl_diag_gaussian, kl_gaussians

floats = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(
    mu=st.lists(floats, min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_diag_kl_matches_monte_carlo(mu: list[float], seed: int, data: st.DataObject) -> None:
    logvar = data.draw(st.lists(floats, min_size=len(mu), max_size=len(mu)))
    mu_t = torch.tensor(mu, dtype=torch.float64)
    lv_t = torch.tensor(logvar, dtype=torch.float64)
    closed = float(kl_diag_gaussian(mu_t, lv_t).sum())

    gen = torch.Generator().manual_seed(seed)
    n = 200_000
    z = mu_t + torch.exp(0.5 * lv_t) * torch.randn(n, len(mu), generator=gen, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu_t, torch.exp(0.5 * lv_t)).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    ratio = log_q - log_p
    stderr = float(ratio.std()) / np.sqrt(n)
    assert abs(float(ratio.mean()) - closed) < 6 * stderr + 1e-9


def _spd(rng: np.random.Generator, k: int) -> torch.Tensor:
    a = rng.standard_normal((k, k))
    return torch.tensor(a @ a.T + 0.5 * np.eye(k), dtype=torch.float64)


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_full_covariance_kl_matches_definition(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mu0, mu1 = (torch.tensor(rng.standard_normal(k)) for _ in range(2))
    cov0, cov1 = _spd(rng, k), _spd(rng, k)
    closed = float(kl_gaussians(mu0, cov0, mu1, cov1))
    assert closed >= -1e-9

    p0 = torch.distributions.MultivariateNormal(mu0, cov0)
    p1 = torch.distributions.MultivariateNormal(mu1, cov1)
    torch.manual_seed(seed % 2**31)
    z = p0.sample((200_000,))
    ratio = p0.log_prob(z) - p1.log_prob(z)
    stderr = float(ratio.std()) / np.sqrt(len(z))
    assert abs(float(ratio.mean()) - closed) < 6 * stderr + 1e-9


def test_full_covariance_kl_reduces_to_diagonal_form() -> None:
    mu = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    logvar = torch.tensor([-0.5, 0.7, 0.0], dtype=torch.float64)
    full = kl_gaussians(
        mu,
        torch.diag(logvar.exp()),
        torch.zeros(3, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64),
    )
    assert torch.allclose(full, kl_diag_gaussian(mu, logvar).sum())
    assert float(kl_diag_gaussian(torch.zeros(2), torch.zeros(2)).sum()) == 0.0
