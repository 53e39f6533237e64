"""Full-covariance Gaussians of latent codes: the moment-matched Gaussian of a set of diagonal
posteriors and the closed-form KL divergence between two Gaussians, in nats (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    """N(mean, cov) in float64; leading axes, when present, index a batch of Gaussians
    (mean [..., L], cov [..., L, L])."""

    mean: np.ndarray
    cov: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])


def moment_match(mu: np.ndarray, logvar: np.ndarray) -> Gaussian:
    """The Gaussian with the mean and covariance of the mixture (1/n) sum_i N(mu_i, diag σ_i²):
    mean = mean_i mu_i, cov = Cov_i(mu_i) (denominator n) + diag(mean_i σ_i²)."""
    mu = np.asarray(mu, np.float64)
    var = np.exp(np.asarray(logvar, np.float64))
    if mu.ndim != 2 or mu.shape != var.shape or len(mu) == 0:
        raise ValueError(f"mu and logvar must be [rows >= 1, L] alike, got {mu.shape}, {var.shape}")
    mean = mu.mean(0)
    centred = mu - mean
    cov = centred.T @ centred / len(mu)
    return Gaussian(mean, cov + np.diag(var.mean(0)))


def clip_posteriors(
    mu: np.ndarray, logvar: np.ndarray, frame: Gaussian, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bound each row's pull on a moment match: posterior means farther than `radius` from
    frame.mean in frame's Mahalanobis distance are moved in along their ray to `radius`, and
    posterior variances are capped at radius² times frame's variance of that dimension.

    One extreme row would otherwise move a window's covariance by its squared distance over
    the window size; the aggregated posteriors of real data have such rows (docs/monitoring.md).
    """
    mu = np.asarray(mu, np.float64)
    logvar = np.asarray(logvar, np.float64)
    chol = _cholesky(frame.cov, "the clipping frame's")
    offset = mu - frame.mean
    distance = np.sqrt((np.linalg.solve(chol, offset.T) ** 2).sum(0))
    factor = np.minimum(1.0, radius / np.maximum(distance, 1e-300))
    cap = np.log(radius**2 * np.diag(frame.cov))
    return frame.mean + offset * factor[:, None], np.minimum(logvar, cap)


def _cholesky(cov: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"{what} covariance is not positive definite") from exc


def kl_gaussian(p: Gaussian, q: Gaussian) -> np.ndarray:
    """KL(p || q) in nats, batched over leading axes:
    0.5 * (tr(Σq⁻¹ Σp) + (μq − μp)ᵀ Σq⁻¹ (μq − μp) − k + log det Σq − log det Σp).

    Through Cholesky factors Lp, Lq: tr(Σq⁻¹ Σp) = ||Lq⁻¹ Lp||²_F and the log-determinants are
    sums of log diagonals, so no inverse or determinant is ever formed. Rounding can leave a
    tiny negative value for equal Gaussians; the result is clipped at 0.
    """
    k = p.dim
    batch = np.broadcast_shapes(p.mean.shape[:-1], q.mean.shape[:-1])
    lp = np.broadcast_to(_cholesky(p.cov, "the first Gaussian's"), (*batch, k, k))
    lq = np.broadcast_to(_cholesky(q.cov, "the second Gaussian's"), (*batch, k, k))
    whitened = np.linalg.solve(lq, lp)
    diff = np.broadcast_to((q.mean - p.mean)[..., None], (*batch, k, 1))
    delta = np.linalg.solve(lq, diff)[..., 0]
    trace = (whitened**2).sum((-2, -1))
    maha = (delta**2).sum(-1)
    logdet_q = 2.0 * np.log(np.diagonal(lq, axis1=-2, axis2=-1)).sum(-1)
    logdet_p = 2.0 * np.log(np.diagonal(lp, axis1=-2, axis2=-1)).sum(-1)
    return np.maximum(0.5 * (trace + maha - k + logdet_q - logdet_p), 0.0)


def marginal_kl(p: Gaussian, q: Gaussian) -> np.ndarray:
    """KL of each dimension's marginal, KL(N(μp_d, Σp_dd) || N(μq_d, Σq_dd)) [..., L] in nats:
    how far that latent coordinate alone has moved. These do not sum to kl_gaussian(p, q),
    which also counts changed correlations between dimensions."""
    vp = np.diagonal(p.cov, axis1=-2, axis2=-1)
    vq = np.diagonal(q.cov, axis1=-2, axis2=-1)
    ratio = vp / vq
    return np.maximum(0.5 * (ratio + (q.mean - p.mean) ** 2 / vq - 1.0 - np.log(ratio)), 0.0)


class MomentSums:
    """The moment-matched Gaussian of posteriors added batch by batch, in O(L²) memory however
    many rows: float64 sums of mu, mu muᵀ and σ² about a fixed `centre` (near the rows' mean,
    to keep the covariance's cancellation small). `gaussian()` equals moment_match of all the
    rows at once, up to rounding."""

    def __init__(self, centre: np.ndarray) -> None:
        self.centre = np.asarray(centre, np.float64)
        dim = len(self.centre)
        self.rows = 0
        self._sum = np.zeros(dim)
        self._outer = np.zeros((dim, dim))
        self._var = np.zeros(dim)

    def add(self, mu: np.ndarray, logvar: np.ndarray) -> None:
        """Add posteriors mu, logvar [n, L]."""
        offset = np.asarray(mu, np.float64) - self.centre
        self.rows += len(offset)
        self._sum += offset.sum(0)
        self._outer += offset.T @ offset
        self._var += np.exp(np.asarray(logvar, np.float64)).sum(0)

    def gaussian(self) -> Gaussian:
        """N(mean, Cov(mu) + diag(mean σ²)) of the rows added (ValueError when none were)."""
        if self.rows == 0:
            raise ValueError("no rows were added")
        mean = self._sum / self.rows
        cov = self._outer / self.rows - np.outer(mean, mean)
        return Gaussian(self.centre + mean, cov + np.diag(self._var / self.rows))
