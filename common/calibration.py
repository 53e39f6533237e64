"""Calibration of anomaly scores: quantile tables, thresholds and empirical p-values."""

from __future__ import annotations

import numpy as np

from vaeserve.common.manifest import Calibration
from vaeserve.common.scores import DEFAULT_SCORE, SCORE_NAMES

LEVELS = np.linspace(0.0, 1.0, 1001)


def fit_calibration(
    scores: dict[str, np.ndarray],
    threshold_quantile: float = 0.99,
    default_score: str = DEFAULT_SCORE,
) -> Calibration:
    """Quantiles at 0.1% steps of each score over the validation rows, and thresholds."""
    rows = len(next(iter(scores.values())))
    if rows == 0:
        raise ValueError("calibration needs at least one validation row")
    quantiles = {k: np.quantile(np.asarray(scores[k], np.float64), LEVELS) for k in SCORE_NAMES}
    return Calibration(
        rows=int(rows),
        levels=[float(v) for v in LEVELS],
        quantiles={k: [float(v) for v in q] for k, q in quantiles.items()},
        thresholds={
            k: float(np.quantile(np.asarray(scores[k], np.float64), threshold_quantile))
            for k in SCORE_NAMES
        },
        threshold_quantile=threshold_quantile,
        default_score=default_score,
    )


class PValues:
    """Upper-tail empirical p-values of one score: P(score_cal >= s).

    Interpolates the quantile table; clipped to [1 / (rows + 1), 1] because a finite
    calibration set cannot support smaller p-values.
    """

    def __init__(self, calibration: Calibration, score: str) -> None:
        q = np.asarray(calibration.quantiles[score], np.float64)
        levels = np.asarray(calibration.levels, np.float64)
        # np.interp needs increasing x; flat stretches of the quantile function are kept
        # by taking the highest level reached at each distinct value.
        self._values, idx = np.unique(q[::-1], return_index=True)
        self._levels = levels[::-1][idx]
        self._floor = 1.0 / (calibration.rows + 1)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        cdf = np.interp(np.asarray(s, np.float64), self._values, self._levels, 0.0, 1.0)
        return np.clip(1.0 - cdf, self._floor, 1.0)
