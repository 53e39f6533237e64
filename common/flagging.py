"""Anomaly flags from scores: which score and threshold a flag uses (a request's, or the
model's calibrated defaults), and each row's p-value and flag.

`vae-server` (server/dataplane.py) and in-process scoring (common/model_scorer.py) both flag
rows through `Flagger`, so the two can never disagree on a p-value or a flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vaeserve.common.calibration import PValues
from vaeserve.common.manifest import Calibration
from vaeserve.common.scores import SCORE_NAMES, check_score_name


class NoCalibratedThreshold(ValueError):
    """The model has no calibrated threshold for the score asked for: send a threshold."""


@dataclass(frozen=True)
class Flags:
    """Per-row p-values (float64, upper tail against the validation split; NaN where the
    model has no quantiles for the score) and flags (score > threshold)."""

    p_value: np.ndarray
    is_anomaly: np.ndarray


class Flagger:
    """One model version's calibration: p-value tables per score and calibrated thresholds."""

    def __init__(self, calibration: Calibration, label: str) -> None:
        """`label` names the model in messages (e.g. "model 'digits' version 1")."""
        self.calibration = calibration
        self.label = label
        self._pvalues = {
            s: PValues(calibration, s) for s in SCORE_NAMES if s in calibration.quantiles
        }

    def choose(self, score: str | None, threshold: float | None) -> tuple[str, float]:
        """The flag's score (None: the model's default) and threshold (None: the calibrated
        one). ValueError for an unknown score or a non-finite threshold;
        NoCalibratedThreshold when no threshold is given and none is calibrated."""
        name = check_score_name(score or self.calibration.default_score)
        if threshold is not None:
            if not np.isfinite(threshold):
                raise ValueError("threshold must be a finite number (nats)")
            return name, float(threshold)
        if name not in self.calibration.thresholds:
            raise NoCalibratedThreshold(
                f"{self.label} has no calibrated threshold for {name}; send threshold"
            )
        return name, float(self.calibration.thresholds[name])

    def flag(self, scores: Mapping[str, np.ndarray], score: str, threshold: float) -> Flags:
        """p-values and flags of rows from their scores (the scorer graph's outputs)."""
        values = np.asarray(scores[score])
        pvalues = self._pvalues.get(score)
        if pvalues is None:
            p = np.full(len(values), np.nan, np.float64)
        else:
            p = np.asarray(pvalues(values), np.float64)
        return Flags(p_value=p, is_anomaly=values > threshold)
