"""How often does the drift test alarm? False-alarm rates on windows of held-out rows and
detection rates on shifted windows, from posteriors (mu, logvar) of rows the reference never
saw; for tests and benchmarks (docs/monitoring.md states the figures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vaeserve.common.drift import DriftReference
from vaeserve.common.manifest import load_manifest
from vaeserve.export.drift_null import build_drift_spec


@dataclass
class AlarmRate:
    """The p-values of `windows` windows of `window` rows; alarms: how many were < alpha."""

    window: int
    alpha: float
    p_values: np.ndarray

    @property
    def windows(self) -> int:
        return len(self.p_values)

    @property
    def alarms(self) -> int:
        return int((self.p_values < self.alpha).sum())

    @property
    def rate(self) -> float:
        return self.alarms / self.windows

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "windows": self.windows,
            "alpha": self.alpha,
            "alarms": self.alarms,
            "rate": self.rate,
            "p_below_0.1": float((self.p_values < 0.1).mean()),
            "p_below_0.5": float((self.p_values < 0.5).mean()),
        }


def posteriors(model_dir: str | Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) of rows x from a model version's scorer.onnx under onnxruntime (CPU)."""
    manifest = load_manifest(model_dir)
    path = Path(model_dir) / manifest.graphs["scorer"].file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mu, logvar = session.run(["mu", "logvar"], {"x": np.ascontiguousarray(x, np.float32)})
    return mu, logvar


def false_alarm_rate(
    reference: DriftReference,
    mu: np.ndarray,
    logvar: np.ndarray,
    window: int,
    windows: int,
    seed: int = 0,
    alpha: float = 0.01,
) -> AlarmRate:
    """Alarms of one fixed reference on `windows` windows, each `window` rows drawn without
    replacement from held-out posteriors mu, logvar [N, L] (N >= window)."""
    rng = np.random.default_rng(seed)
    p = np.empty(windows)
    for i in range(windows):
        rows = rng.choice(len(mu), window, replace=False)
        p[i] = reference.measure(mu[rows], logvar[rows]).p_value
    return AlarmRate(window, alpha, p)


def marginal_false_alarm_rate(
    mu: np.ndarray,
    logvar: np.ndarray,
    reference_rows: int,
    window_sizes: list[int],
    trials: int,
    seed: int = 0,
    alpha: float = 0.01,
    method: str = "auto",
    replicates: int = 1000,
) -> list[AlarmRate]:
    """The false-alarm rate over exports as well as windows: each trial fits a reference and
    its null to `reference_rows` held-out rows, as an export does, and tests one window per
    size drawn from the other rows, so reference and window are independent samples."""
    rng = np.random.default_rng(seed)
    p = np.empty((len(window_sizes), trials))
    for t in range(trials):
        order = rng.permutation(len(mu))
        ref_rows, rest = order[:reference_rows], order[reference_rows:]
        spec = build_drift_spec(
            mu[ref_rows],
            logvar[ref_rows],
            window_sizes,
            replicates,
            int(rng.integers(2**31)),
            method,
        )
        reference = DriftReference(spec)
        for i, w in enumerate(window_sizes):
            rows = rng.choice(rest, w, replace=False)
            p[i, t] = reference.measure(mu[rows], logvar[rows]).p_value
    return [AlarmRate(w, alpha, p[i]) for i, w in enumerate(window_sizes)]


def detection_rate(
    reference: DriftReference,
    normal: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    window: int,
    fraction: float,
    windows: int,
    seed: int = 0,
    alpha: float = 0.01,
) -> AlarmRate:
    """Alarms on windows of `window` rows of which round(fraction * window) come from the
    `other` posteriors (mu, logvar) and the rest from `normal`, each drawn without
    replacement; the power of the test against that mixture."""
    rng = np.random.default_rng(seed)
    k = round(fraction * window)
    p = np.empty(windows)
    for i in range(windows):
        a = rng.choice(len(normal[0]), window - k, replace=False)
        b = rng.choice(len(other[0]), k, replace=False)
        mu = np.concatenate([normal[0][a], other[0][b]])
        logvar = np.concatenate([normal[1][a], other[1][b]])
        p[i] = reference.measure(mu, logvar).p_value
    return AlarmRate(window, alpha, p)
