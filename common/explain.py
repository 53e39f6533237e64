"""Why a row scores as it does: its top-K features by reconstruction NLL above the feature's
validation baseline, from the explainer graph's outputs (numpy only; docs/monitoring.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeserve.common.manifest import Manifest


class ExplainUnavailable(ValueError):
    """The model was exported without the explainer graph (before explanations existed)."""


@dataclass(frozen=True)
class TopFeatures:
    """The top K features of each of n rows, most responsible first; arrays are [n, K].

    index: feature index (manifest.feature_names order). nll: the feature's reconstruction
    NLL in nats, raw units (over all D features these sum to the row's recon_nll). excess:
    nll minus the feature's validation mean, the ranking key (unit-free). share: excess over
    the sum of the row's positive excesses (0 when none is positive). value, reconstruction:
    the row's raw feature value and the model's reconstruction x_hat of it.
    """

    index: np.ndarray
    nll: np.ndarray
    excess: np.ndarray
    share: np.ndarray
    value: np.ndarray
    reconstruction: np.ndarray

    def names(self, feature_names: list[str]) -> list[list[str]]:
        """Feature names per row, in rank order."""
        return [[feature_names[j] for j in row] for row in self.index.tolist()]


def explain_count(k: int, input_dim: int) -> int:
    """The number of top features an explanation of K features gets: K, or every feature when
    K is larger (one K can then serve models of any width)."""
    return max(0, min(int(k), int(input_dim)))


def baseline(manifest: Manifest) -> np.ndarray:
    """The manifest's per-feature validation NLL baseline [D]; ExplainUnavailable without it."""
    if manifest.explain is None or "explainer" not in manifest.graphs:
        raise ExplainUnavailable(
            f"model {manifest.name!r} version {manifest.version} has no explainer graph; "
            "re-export it with this vae-export"
        )
    return np.asarray(manifest.explain.baseline_nll, np.float64)


def top_features(
    recon_nll_per_feature: np.ndarray,
    x: np.ndarray,
    x_hat: np.ndarray,
    k: int,
    baseline_nll: np.ndarray | None = None,
) -> TopFeatures:
    """The k features of each row with the largest NLL excess over `baseline_nll` (zeros when
    None: raw NLL). Ties go to the lower feature index; NaN excesses rank last."""
    nll = np.asarray(recon_nll_per_feature, np.float64)
    if nll.ndim != 2 or np.shape(x) != nll.shape or np.shape(x_hat) != nll.shape:
        raise ValueError(
            f"per-feature NLL, x and x_hat must be [rows, D] alike, got {nll.shape}, "
            f"{np.shape(x)}, {np.shape(x_hat)}"
        )
    d = nll.shape[1]
    if not 1 <= k <= d:
        raise ValueError(f"k must be between 1 and the {d} features, got {k}")
    base = np.zeros(d) if baseline_nll is None else np.asarray(baseline_nll, np.float64)
    if base.shape != (d,):
        raise ValueError(f"baseline_nll must have {d} values, got {base.shape}")
    excess = nll - base
    order = _top_k_order(excess, k)
    positive = np.where(excess > 0, excess, 0.0).sum(1, keepdims=True)
    top_excess = np.take_along_axis(excess, order, 1)
    share = np.divide(top_excess, positive, out=np.zeros_like(top_excess), where=positive > 0)
    return TopFeatures(
        index=order.astype(np.int64),
        nll=np.take_along_axis(nll, order, 1),
        excess=top_excess,
        share=share,
        value=np.take_along_axis(np.asarray(x), order, 1),
        reconstruction=np.take_along_axis(np.asarray(x_hat), order, 1),
    )


SELECT_MAX_K = 8  # up to this K, K argmax passes beat a full sort of each row


def _top_k_order(excess: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k largest values, largest first; ties in index order, NaN
    last: a stable sort of -excess, cut to k. For small k, k argmax passes (argmax returns the
    first of equal values) give the same order in a fraction of the time."""
    if k <= SELECT_MAX_K:
        work = np.where(np.isnan(excess), -np.inf, excess)
        rows = np.arange(len(work))
        order = np.empty((len(work), k), np.int64)
        for i in range(k):
            order[:, i] = best = work.argmax(axis=1)
            if np.isneginf(work[rows, best]).any():
                break  # a row ran out of finite values: its NaN/-inf order needs the sort
            work[rows, best] = -np.inf
        else:
            return order
    return np.argsort(-excess, axis=1, kind="stable")[:, :k]
