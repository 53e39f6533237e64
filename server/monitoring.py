"""What a loaded model version offers besides scores: explanations (the explainer graph and
its per-feature baseline) and a drift window, or why it does not (an export from before them,
drift monitoring turned off).

The drift window holds the posteriors (mu, logvar) of the last `drift_window_rows` rows the
version scored. Scoring only appends each scorer batch to its ring (O(rows x L) copies); the
statistic, O(W L²), is computed off the scoring path, by the server's periodic task every
`drift_period_s` and by ModelDrift reads, and a reading is reused until more rows arrive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from vaeserve.common.drift import DriftReference, DriftUnavailable, DriftWindow
from vaeserve.common.explain import ExplainUnavailable, baseline
from vaeserve.common.manifest import Manifest

log = logging.getLogger(__name__)

POSTERIOR_OUTPUTS = ("mu", "logvar")  # what the scorer must return for drift monitoring


@dataclass(frozen=True)
class DriftReading:
    """One evaluation of a drift window: KL in nats, its per-dimension marginals and shares,
    the p-value (None below the null's smallest window), when, and over how many rows."""

    window_rows: int  # the window's size
    rows: int  # rows in it when evaluated
    rows_seen: int  # rows the version had scored by then
    kl: float
    kl_per_dim: np.ndarray
    share_per_dim: np.ndarray
    p_value: float | None
    evaluated_at: float  # Unix time
    reference_rows: int
    null_method: str


class ModelDrift:
    """One version's drift window against its exported reference (thread-safe)."""

    def __init__(self, reference: DriftReference, window_rows: int) -> None:
        self.reference = reference
        self.window = DriftWindow(reference.gaussian.dim, window_rows)
        self._seen = 0
        self._reading: DriftReading | None = None
        self._lock = threading.Lock()

    @property
    def rows_seen(self) -> int:
        """Rows added since the version loaded."""
        return self._seen

    def add(self, mu: np.ndarray, logvar: np.ndarray) -> None:
        """Append a scorer batch's posteriors [n, L] (the only work on the scoring path)."""
        if len(mu):
            self.window.add(mu, logvar)
            self._seen += len(mu)

    def reading(self) -> DriftReading:
        """The window's drift: the last reading while no row has arrived since, else a new
        one (blocking, O(W L²): call it off the event loop)."""
        with self._lock:
            seen = self._seen
            if self._reading is not None and self._reading.rows_seen == seen:
                return self._reading
            rows = self.window.rows
            ref = self.reference
            if rows == 0:
                kl, per_dim, share, p = 0.0, np.zeros(0), np.zeros(0), None
            else:
                result = self.window.evaluate(ref)
                rows = result.rows
                kl, per_dim, share, p = (
                    result.kl,
                    result.kl_per_dim,
                    result.share_per_dim,
                    result.p_value,
                )
            self._reading = DriftReading(
                window_rows=self.window.size,
                rows=rows,
                rows_seen=seen,
                kl=float(kl),
                kl_per_dim=np.asarray(per_dim, np.float64),
                share_per_dim=np.asarray(share, np.float64),
                p_value=None if p is None else float(p),
                evaluated_at=time.time(),
                reference_rows=ref.reference_rows,
                null_method=ref.method,
            )
            return self._reading


@dataclass
class Monitoring:
    """A version's explanation baseline and drift window; `unavailable` says why either is
    missing ({"explain": reason, "drift": reason})."""

    explain_baseline: np.ndarray | None = None
    drift: ModelDrift | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_model(
        cls,
        manifest: Manifest,
        label: str,
        graphs: Collection[str],
        scorer_outputs: Collection[str],
        window_rows: int,
    ) -> Monitoring:
        """What a version with these graphs and scorer outputs can offer; `label` names it in
        the reasons ("model 'digits' version 1"), window_rows 0 turns drift off."""
        out = cls()
        try:
            if "explainer" not in graphs:
                raise ExplainUnavailable("no explainer graph")
            out.explain_baseline = baseline(manifest)
        except ExplainUnavailable:
            out.unavailable["explain"] = (
                f"{label} was exported without an explainer (explainer.onnx and the manifest's "
                "explain section); re-export it with this version of vae-export for explanations"
            )
        if window_rows == 0:
            out.unavailable["drift"] = (
                "drift monitoring is off on this server (drift_window_rows 0)"
            )
            return out
        try:
            reference = DriftReference.from_manifest(manifest)
            if not set(POSTERIOR_OUTPUTS) <= set(scorer_outputs):
                raise DriftUnavailable("no posterior outputs")
        except DriftUnavailable:
            out.unavailable["drift"] = (
                f"{label} was exported without a drift reference (the manifest's drift section "
                "and the scorer's mu/logvar outputs); re-export it with this version of "
                "vae-export for drift monitoring"
            )
            return out
        if not reference.covers(window_rows):
            out.unavailable["drift"] = (
                f"{label} stores the drift null for windows of {reference.min_rows}.."
                f"{reference.max_rows} rows, not drift_window_rows {window_rows}; set "
                "drift_window_rows in that range"
            )
            log.warning("%s: no drift monitoring: %s", label, out.unavailable["drift"])
            return out
        out.drift = ModelDrift(reference, window_rows)
        return out
