"""Drift of a stream of scored rows: KL(N(window) || N(reference)) between moment-matched
Gaussians of the rows' posteriors, its per-dimension parts and its p-value against the null
stored at export (numpy only; see docs/monitoring.md)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from vaeserve.common.gaussian import (
    Gaussian,
    clip_posteriors,
    kl_gaussian,
    marginal_kl,
    moment_match,
)
from vaeserve.common.manifest import DriftSpec, Manifest


class DriftUnavailable(ValueError):
    """The model was exported without a drift reference (before drift monitoring existed)."""


@dataclass(frozen=True)
class DriftResult:
    """One window's drift: `kl` in nats, each latent dimension's marginal KL (nats) and its
    share of their sum, and the p-value (None when `rows` is outside the stored null)."""

    rows: int
    kl: float
    kl_per_dim: np.ndarray
    share_per_dim: np.ndarray
    p_value: float | None


def _upper_tail(values: np.ndarray, levels: np.ndarray, s: np.ndarray) -> np.ndarray:
    """1 - CDF(s) from a quantile table; flat stretches keep their highest level."""
    unique, idx = np.unique(values[::-1], return_index=True)
    return 1.0 - np.interp(s, unique, levels[::-1][idx], 0.0, 1.0)


class DriftReference:
    """One model version's reference Gaussian and null distribution, from its manifest."""

    def __init__(self, spec: DriftSpec) -> None:
        mean = np.asarray(spec.mean, np.float64)
        cov = np.asarray(spec.cov_means, np.float64) + np.diag(spec.posterior_var)
        self.gaussian = Gaussian(mean, cov)
        self.clip_radius = float(spec.clip_radius)
        self.window_sizes = np.asarray(spec.window_sizes, np.int64)
        self.levels = np.asarray(spec.levels, np.float64)
        self.quantiles = np.asarray(spec.quantiles, np.float64)
        self.method = spec.null_method
        self.reference_rows = spec.rows
        if self.quantiles.shape != (len(self.window_sizes), len(self.levels)):
            raise ValueError(
                f"drift null: quantiles {self.quantiles.shape} do not match "
                f"{len(self.window_sizes)} window sizes x {len(self.levels)} levels"
            )
        if np.any(np.diff(self.window_sizes) <= 0):
            raise ValueError("drift null: window sizes must increase")
        self._floor = 1.0 / (spec.replicates + 1)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DriftReference:
        """The manifest's reference; DriftUnavailable when the export has none."""
        if manifest.drift is None:
            raise DriftUnavailable(
                f"model {manifest.name!r} version {manifest.version} has no drift reference; "
                "re-export it with this vae-export"
            )
        return cls(manifest.drift)

    @property
    def min_rows(self) -> int:
        return int(self.window_sizes[0])

    @property
    def max_rows(self) -> int:
        return int(self.window_sizes[-1])

    def covers(self, rows: int) -> bool:
        """Whether a window of `rows` rows has a null (min_rows <= rows <= max_rows)."""
        return self.min_rows <= rows <= self.max_rows

    def null_quantiles(self, rows: int) -> np.ndarray:
        """The null's quantile table for `rows`: a stored size's own, or between two stored
        sizes linear in 1/rows (the statistic's null mean and spread shrink about like
        1/rows). ValueError outside the stored sizes."""
        if not self.covers(rows):
            raise ValueError(
                f"a drift window of {rows} rows is outside the stored null "
                f"({self.min_rows}..{self.max_rows} rows); use a window size in that range"
            )
        hi = int(np.searchsorted(self.window_sizes, rows))
        if self.window_sizes[hi] == rows:
            return self.quantiles[hi]
        a, b = self.window_sizes[hi - 1], self.window_sizes[hi]
        t = (1.0 / rows - 1.0 / a) / (1.0 / b - 1.0 / a)
        return (1.0 - t) * self.quantiles[hi - 1] + t * self.quantiles[hi]

    def p_value(self, statistic: float | np.ndarray, rows: int) -> float | np.ndarray:
        """P(null statistic >= statistic) for windows of `rows` rows, clipped below at
        1 / (replicates + 1), the smallest p-value the stored null supports."""
        s = np.asarray(statistic, np.float64)
        p = np.clip(_upper_tail(self.null_quantiles(rows), self.levels, s), self._floor, 1.0)
        return float(p) if p.ndim == 0 else p

    def evaluate(self, window: Gaussian, rows: int) -> DriftResult:
        """Drift of a window whose moment-matched Gaussian is `window`, fitted from `rows`."""
        per_dim = marginal_kl(window, self.gaussian)
        total = per_dim.sum()
        share = per_dim / total if total > 0 else np.zeros_like(per_dim)
        kl = float(kl_gaussian(window, self.gaussian))
        p = self.p_value(kl, rows) if self.covers(rows) else None
        return DriftResult(rows, kl, per_dim, share, p)

    def window_gaussian(self, mu: np.ndarray, logvar: np.ndarray) -> Gaussian:
        """The moment-matched Gaussian of posteriors mu, logvar [rows, L], each row clipped
        to clip_radius of the reference first, as the reference's own rows were."""
        return moment_match(*clip_posteriors(mu, logvar, self.gaussian, self.clip_radius))

    def measure(self, mu: np.ndarray, logvar: np.ndarray) -> DriftResult:
        """Drift of the rows whose posteriors are mu, logvar [rows, L]."""
        return self.evaluate(self.window_gaussian(mu, logvar), len(mu))


class DriftWindow:
    """The posteriors of the last `size` scored rows, fed batch by batch (thread-safe).

    A ring buffer of mu and logvar, 2 * size * L float64 values: a sliding window needs the
    rows that leave it, and refitting from the ring on each read is exact where running sums
    with subtraction would accumulate rounding error over a long stream.
    """

    def __init__(self, latent_dim: int, size: int) -> None:
        if size < 1 or latent_dim < 1:
            raise ValueError("a drift window needs size >= 1 and latent_dim >= 1")
        self.size = size
        self._mu = np.zeros((size, latent_dim))
        self._logvar = np.zeros((size, latent_dim))
        self._next = 0
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Rows in the window now: up to `size`."""
        return self._rows

    def add(self, mu: np.ndarray, logvar: np.ndarray) -> None:
        """Append a batch's posteriors [n, L]; the oldest rows beyond `size` drop out."""
        mu = np.asarray(mu, np.float64)[-self.size :]
        logvar = np.asarray(logvar, np.float64)[-self.size :]
        if mu.shape != logvar.shape or mu.ndim != 2 or mu.shape[1] != self._mu.shape[1]:
            raise ValueError(
                f"mu and logvar must both be [n, {self._mu.shape[1]}], got {mu.shape}, "
                f"{logvar.shape}"
            )
        n = len(mu)
        with self._lock:
            slots = (self._next + np.arange(n)) % self.size
            self._mu[slots] = mu
            self._logvar[slots] = logvar
            self._next = (self._next + n) % self.size
            self._rows = min(self.size, self._rows + n)

    def evaluate(self, reference: DriftReference) -> DriftResult:
        """The window's drift against `reference` (ValueError when empty)."""
        # rows fill slots 0.. in order until the ring is full, so [:rows] is the window
        with self._lock:
            n = self._rows
            mu, logvar = self._mu[:n].copy(), self._logvar[:n].copy()
        if n == 0:
            raise ValueError("the drift window is empty")
        return reference.measure(mu, logvar)

    def clear(self) -> None:
        with self._lock:
            self._next = self._rows = 0
