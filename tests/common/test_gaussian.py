"""Moment-matched Gaussians and the closed-form KL between full-covariance Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaeserve.common.gaussian import Gaussian, kl_gaussian, marginal_kl, moment_match
from vaeserve.training.kl import kl_gaussians


def _spd(rng: np.random.Generator, k: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    a = rng.standard_normal((*batch, k, k))
    return a @ np.swapaxes(a, -1, -2) + 0.05 * np.eye(k)


@pytest.mark.parametrize("k", [1, 2, 8, 20])
def test_kl_agrees_with_the_torch_formula(k: int) -> None:
    rng = np.random.default_rng(k)
    m0, m1 = rng.standard_normal((2, 6, k)) * 2
    c0, c1 = _spd(rng, k, (6,)), _spd(rng, k, (6,))
    ours = kl_gaussian(Gaussian(m0, c0), Gaussian(m1, c1))
    want = kl_gaussians(*(torch.from_numpy(v) for v in (m0, c0, m1, c1))).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-9)
    assert ours.shape == (6,) and np.all(ours > 0)
    # one Gaussian against a batch broadcasts like the batch of pairs
    single = kl_gaussian(Gaussian(m0, c0), Gaussian(m1[0], c1[0]))
    pairs = [float(kl_gaussian(Gaussian(m0[i], c0[i]), Gaussian(m1[0], c1[0]))) for i in range(6)]
    np.testing.assert_allclose(single, pairs, rtol=1e-12)


def test_kl_of_equal_and_ill_conditioned_gaussians() -> None:
    rng = np.random.default_rng(0)
    c = _spd(rng, 8)
    g = Gaussian(rng.standard_normal(8), c)
    assert float(kl_gaussian(g, g)) == 0.0
    # condition number ~1e8 (a collapsed latent dimension): still finite and accurate
    stretched = np.diag([1e-4, *np.ones(7)]) @ c @ np.diag([1e-4, *np.ones(7)])
    p, q = Gaussian(np.zeros(8), stretched), Gaussian(np.full(8, 0.1), stretched * 1.5)
    want = kl_gaussians(*(torch.from_numpy(v) for v in (p.mean, p.cov, q.mean, q.cov)))
    assert float(kl_gaussian(p, q)) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="not positive definite"):
        kl_gaussian(Gaussian(np.zeros(2), np.diag([1.0, -1.0])), Gaussian(np.zeros(2), np.eye(2)))


def test_marginal_kl_sums_to_the_total_only_without_correlations() -> None:
    rng = np.random.default_rng(1)
    p = Gaussian(rng.standard_normal(5), np.diag(rng.uniform(0.2, 2, 5)))
    q = Gaussian(rng.standard_normal(5), np.diag(rng.uniform(0.2, 2, 5)))
    per_dim = marginal_kl(p, q)
    assert per_dim.sum() == pytest.approx(float(kl_gaussian(p, q)), rel=1e-12)
    for d in range(5):  # each part is the 1-D KL of that coordinate
        one = kl_gaussian(
            Gaussian(p.mean[d : d + 1], p.cov[d : d + 1, d : d + 1]),
            Gaussian(q.mean[d : d + 1], q.cov[d : d + 1, d : d + 1]),
        )
        assert per_dim[d] == pytest.approx(float(one), rel=1e-12)
    correlated = Gaussian(q.mean, q.cov + 0.3 * np.sqrt(np.outer(np.diag(q.cov), np.diag(q.cov))))
    assert marginal_kl(p, correlated).sum() != pytest.approx(float(kl_gaussian(p, correlated)))


def test_moment_match_is_the_mixture_of_the_posteriors() -> None:
    rng = np.random.default_rng(2)
    mu = rng.standard_normal((6, 3)) * [3.0, 1.0, 0.1]
    logvar = rng.normal(-1.0, 0.5, (6, 3))
    g = moment_match(mu, logvar)
    # draw from the mixture (1/6) sum_i N(mu_i, diag exp(logvar_i)) and compare moments
    n = 400_000
    comp = rng.integers(0, 6, n)
    z = mu[comp] + np.exp(0.5 * logvar[comp]) * rng.standard_normal((n, 3))
    se = np.sqrt(np.diag(g.cov) / n)
    assert np.all(np.abs(z.mean(0) - g.mean) < 5 * se)
    np.testing.assert_allclose(np.cov(z, rowvar=False), g.cov, rtol=0.02, atol=0.01)
    with pytest.raises(ValueError, match="alike"):
        moment_match(mu, logvar[:, :2])
