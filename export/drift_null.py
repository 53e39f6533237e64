"""The drift reference stored at export: the validation posteriors' moment-matched Gaussian and
the null distribution of KL(N(window) || N(reference)) per window size (numpy only).

Rows are first clipped against the reference (common.gaussian.clip_posteriors; the reference
is the fixed point), so no single row dominates a moment match. The reference is itself
estimated from the n validation rows, so each null replicate fits BOTH a reference from n rows
and a window from W rows, independently, before taking their KL; a null of window noise alone
would inflate false alarms when W is comparable to n. Two ways to draw those rows
(docs/monitoring.md has the reasoning and the measured false-alarm rates):

- "bootstrap": resample the n clipped validation posteriors (no shape assumption); used with
  at least BOOTSTRAP_ROWS_PER_DIM rows per latent dimension.
- "parametric": posterior means from a Gaussian whose covariance is itself drawn from its
  posterior given the n rows (inverse-Wishart), posterior variances resampled; for fewer rows,
  where a resample has too few distinct rows to vary like a fresh sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vaeserve.common.gaussian import Gaussian, clip_posteriors, kl_gaussian, moment_match
from vaeserve.common.manifest import DriftSpec

WINDOW_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# 1% steps up to 0.9, then 0.1% steps: p-values to 0.001 where decisions are made
LEVELS = np.round(np.concatenate([np.linspace(0.0, 0.9, 91), np.linspace(0.901, 1.0, 100)]), 4)
REPLICATES = 10_000
SEED = 0
# "auto" bootstraps with at least this many validation rows per latent dimension
BOOTSTRAP_ROWS_PER_DIM = 20
METHODS = ("auto", "bootstrap", "parametric")
# rows' posterior means are clipped at the radius a Gaussian's rows exceed with this
# probability: 0.1% of them when the posterior means really are Gaussian
CLIP_TAIL = 0.001
_Z_CLIP = 3.090232306167813  # the standard normal's 1 - CLIP_TAIL quantile
EXACT_MAX_ROWS = 512  # larger samples' means are drawn from their normal approximation
_CHUNK_VALUES = 1 << 22  # values held per chunk of replicates (memory bound)

# (mean [B, L], Cov of means [B, L, L], mean posterior variance [B, L]) of B samples
Moments = tuple[np.ndarray, np.ndarray, np.ndarray]


def choose_method(rows: int, latent_dim: int, method: str = "auto") -> str:
    """The null method to use: `method` itself, or for "auto" bootstrap with at least
    BOOTSTRAP_ROWS_PER_DIM rows per latent dimension and parametric below."""
    if method not in METHODS:
        raise ValueError(f"drift null method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    return "bootstrap" if rows >= BOOTSTRAP_ROWS_PER_DIM * latent_dim else "parametric"


def clip_radius(latent_dim: int) -> float:
    """The Mahalanobis radius beyond which a Gaussian in latent_dim dimensions has CLIP_TAIL
    of its mass: sqrt of the chi-square quantile (Wilson-Hilferty, within 3% for any L)."""
    k = latent_dim
    return float(np.sqrt(k * (1.0 - 2.0 / (9 * k) + _Z_CLIP * np.sqrt(2.0 / (9 * k))) ** 3))


def fit_reference(
    mu: np.ndarray, logvar: np.ndarray, radius: float, iterations: int = 100
) -> tuple[Gaussian, np.ndarray, np.ndarray]:
    """The reference Gaussian of rows clipped to `radius` of that same Gaussian (a fixed
    point, reached by refitting from the clipped rows, starting from the plain moment
    match), with the clipped rows' mu and logvar."""
    frame = moment_match(mu, logvar)
    for _ in range(iterations):
        cmu, clogvar = clip_posteriors(mu, logvar, frame, radius)
        new = moment_match(cmu, clogvar)
        settled = np.allclose(new.mean, frame.mean, rtol=1e-10, atol=1e-12) and np.allclose(
            new.cov, frame.cov, rtol=1e-10, atol=1e-12
        )
        frame = new
        if settled:
            break
    cmu, clogvar = clip_posteriors(mu, logvar, frame, radius)
    return moment_match(cmu, clogvar), cmu, clogvar


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """F with F Fᵀ = cov for a positive semi-definite cov (singular ones included)."""
    values, vectors = np.linalg.eigh(cov)
    return vectors * np.sqrt(np.clip(values, 0.0, None))


class _SampleMeans:
    """Means of samples drawn with replacement from fixed rows [n, d]: exactly (random row
    counts) up to EXACT_MAX_ROWS rows per sample, beyond that from the normal approximation
    with the rows' own mean and covariance (the resampled mean's exact first two moments;
    by that size its shape is close to normal, and the cost no longer grows with size)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.mean = rows.mean(0)
        self.factor = _psd_factor(np.atleast_2d(np.cov(rows, rowvar=False, bias=True)))

    def draw(self, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
        n, d = self.rows.shape
        if size > EXACT_MAX_ROWS:
            return self.mean + rng.standard_normal((count, d)) @ self.factor.T / np.sqrt(size)
        out = np.empty((count, d))
        step = max(1, _CHUNK_VALUES // (size + n))
        for i in range(0, count, step):
            k = min(step, count - i)
            idx = rng.integers(0, n, (k, size)) + n * np.arange(k)[:, None]
            counts = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n)
            out[i : i + k] = counts @ self.rows / size
        return out


class _Bootstrap:
    """Samples of rows resampled from the held-out posteriors: the moments of each sample
    come from the mean of the rows' (mu, mu muᵀ, σ²), centred so the products stay small."""

    def __init__(self, mu: np.ndarray, var: np.ndarray) -> None:
        self.lat = mu.shape[1]
        self.upper = np.triu_indices(self.lat)
        products = (mu[:, :, None] * mu[:, None, :])[:, self.upper[0], self.upper[1]]
        self.means = _SampleMeans(np.concatenate([mu, products, var], axis=1))

    def draw(self, size: int, count: int, rng: np.random.Generator) -> Moments:
        s = self.means.draw(size, count, rng)
        lat = self.lat
        mean, var = s[:, :lat], s[:, -lat:]
        second = np.zeros((count, lat, lat))
        second[:, self.upper[0], self.upper[1]] = s[:, lat:-lat]
        second[:, self.upper[1], self.upper[0]] = s[:, lat:-lat]
        return mean, second - mean[:, :, None] * mean[:, None, :], var


def _bartlett(df: int, lat: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Lower-triangular A [count, L, L] with A Aᵀ ~ Wishart(I, df), for df >= L."""
    a = np.tril(rng.standard_normal((count, lat, lat)), -1)
    a[:, np.arange(lat), np.arange(lat)] = np.sqrt(rng.chisquare(df - np.arange(lat), (count, lat)))
    return a


class _Parametric:
    """Samples whose posterior means are Gaussian, N(0, C*), drawn without generating rows:
    the sample mean is N(0, C* / size) and, independently, the scatter matrix is
    Wishart(C*, size - 1) (Bartlett's decomposition, or size - 1 outer products when that
    is below L). C* differs per replicate: a draw from the posterior of the covariance given
    the n rows, inverse-Wishart((n - 1) C, n - 1), so the null carries the uncertainty of C
    itself (a plug-in C from few rows is too narrow); with n - 1 < L, the plug-in C.
    Posterior variances are resampled from the rows: only their mean enters the statistic,
    so no shape is assumed for them."""

    def __init__(
        self, mu: np.ndarray, var: np.ndarray, count: int, rng: np.random.Generator
    ) -> None:
        n, self.lat = mu.shape
        cov = np.atleast_2d(np.cov(mu, rowvar=False))
        self.var = _SampleMeans(var)
        try:
            root = np.linalg.cholesky(cov * (n - 1)) if n - 1 >= self.lat else None
        except np.linalg.LinAlgError:
            root = None
        if root is None:
            self.factors = np.broadcast_to(_psd_factor(cov), (count, self.lat, self.lat))
        else:  # W = root⁻ᵀ A Aᵀ root⁻¹ ~ Wishart(S⁻¹, n - 1), C* = W⁻¹ = F Fᵀ
            a = _bartlett(n - 1, self.lat, count, rng)
            self.factors = root @ np.linalg.inv(a).transpose(0, 2, 1)

    def draw(self, size: int, count: int, rng: np.random.Generator) -> Moments:
        lat, f = self.lat, self.factors
        ft = f.transpose(0, 2, 1)
        mean = (rng.standard_normal((count, 1, lat)) @ ft)[:, 0] / np.sqrt(size)
        df = size - 1
        if df < lat:
            g = rng.standard_normal((count, df, lat)) @ ft
            scatter = g.transpose(0, 2, 1) @ g
        else:
            fa = f @ _bartlett(df, lat, count, rng)
            scatter = fa @ fa.transpose(0, 2, 1)
        return mean, scatter / size, self.var.draw(size, count, rng)


def null_statistics(
    mu: np.ndarray,
    logvar: np.ndarray,
    window_sizes: Sequence[int] = WINDOW_SIZES,
    replicates: int = REPLICATES,
    seed: int = SEED,
    method: str = "auto",
) -> np.ndarray:
    """Null replicates of the drift statistic [len(window_sizes), replicates] for the
    posteriors mu, logvar [n, L] of held-out rows; every replicate pairs an independently
    drawn reference of n rows with a window of W rows. Seeded: the same inputs give the
    same values."""
    mu = np.asarray(mu, np.float64)
    var = np.exp(np.asarray(logvar, np.float64))
    n, lat = mu.shape
    if n < 2:
        raise ValueError("the drift null needs the posteriors of at least 2 rows")
    rng = np.random.default_rng(seed)
    mu = mu - mu.mean(0)  # the statistic is shift-invariant; centring keeps moments accurate
    if choose_method(n, lat, method) == "bootstrap":
        sampler: _Bootstrap | _Parametric = _Bootstrap(mu, var)
    else:
        sampler = _Parametric(mu, var, replicates, rng)

    def gaussian(size: int) -> Gaussian:
        mean, cov, v = sampler.draw(size, replicates, rng)
        return Gaussian(mean, cov + v[:, :, None] * np.eye(lat))

    reference = gaussian(n)
    return np.stack([kl_gaussian(gaussian(int(size)), reference) for size in window_sizes])


def build_drift_spec(
    mu: np.ndarray,
    logvar: np.ndarray,
    window_sizes: Sequence[int] = WINDOW_SIZES,
    replicates: int = REPLICATES,
    seed: int = SEED,
    method: str = "auto",
) -> DriftSpec:
    """The manifest's drift section for held-out posteriors mu, logvar [n, L]: their
    moment-matched Gaussian and the null's quantiles at LEVELS per window size."""
    sizes = sorted({int(s) for s in window_sizes})
    if not sizes or sizes[0] < 2:
        raise ValueError("drift window sizes must be >= 2")
    if replicates < 100:
        raise ValueError("the drift null needs at least 100 replicates")
    mu = np.asarray(mu, np.float64)
    if mu.ndim != 2 or len(mu) < 2:
        raise ValueError(f"the drift reference needs posteriors of >= 2 rows, got {mu.shape}")
    radius = clip_radius(mu.shape[1])
    reference, cmu, clogvar = fit_reference(mu, logvar, radius)
    stats = null_statistics(cmu, clogvar, sizes, replicates, seed, method)
    centred = cmu - reference.mean
    return DriftSpec(
        rows=len(mu),
        mean=reference.mean.tolist(),
        cov_means=(centred.T @ centred / len(mu)).tolist(),
        posterior_var=np.exp(clogvar).mean(0).tolist(),
        clip_radius=radius,
        null_method=choose_method(len(mu), mu.shape[1], method),
        replicates=replicates,
        seed=seed,
        window_sizes=sizes,
        levels=LEVELS.tolist(),
        quantiles=np.quantile(stats, LEVELS, axis=1).T.tolist(),
    )
