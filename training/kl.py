"""KL divergences between Gaussians, in nats."""

from __future__ import annotations

import torch


def kl_diag_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per dimension:
    0.5 * (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def kl_gaussians(
    mu0: torch.Tensor, cov0: torch.Tensor, mu1: torch.Tensor, cov1: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu0, cov0) || N(mu1, cov1)) for full covariances:
    0.5 * (tr(cov1^-1 cov0) + (mu1-mu0)^T cov1^-1 (mu1-mu0) - k + log det cov1 - log det cov0)."""
    k = mu0.shape[-1]
    l1 = torch.linalg.cholesky(cov1)
    diff = (mu1 - mu0).unsqueeze(-1)
    trace = torch.cholesky_solve(cov0, l1).diagonal(dim1=-2, dim2=-1).sum(-1)
    maha = (diff.transpose(-1, -2) @ torch.cholesky_solve(diff, l1)).squeeze(-1).squeeze(-1)
    logdet1 = 2.0 * l1.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet0 = torch.linalg.slogdet(cov0)[1]
    return 0.5 * (trace + maha - k + logdet1 - logdet0)
