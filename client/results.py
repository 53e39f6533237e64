"""What VaeClient's calls hand back: scores of one batch (with explanations when asked for),
posteriors, generated rows, drift readings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vaeserve.client.errors import VaeClientError
from vaeserve.common.explain import TopFeatures


@dataclass
class Explanation:
    """Each row's top K features, most responsible first; arrays [n, K].

    index: feature index (the model's feature_names order); names: those names (object array;
    None until known). nll: the feature's reconstruction NLL in nats; excess: nll minus the
    feature's mean over the validation rows (nats; the ranking key); value and reconstruction:
    the row's value of the feature and what the model reconstructed, in raw units.
    """

    index: np.ndarray
    nll: np.ndarray
    excess: np.ndarray
    value: np.ndarray
    reconstruction: np.ndarray
    names: np.ndarray | None = None

    @classmethod
    def from_top(cls, top: TopFeatures) -> Explanation:
        """From common.explain's TopFeatures, in the dtypes a server sends (INT64 indices,
        FLOAT32 values), so in-process explanations equal the server's."""
        return cls(
            index=top.index.astype(np.int64, copy=False),
            nll=np.asarray(top.nll, np.float32),
            excess=np.asarray(top.excess, np.float32),
            value=np.asarray(top.value, np.float32),
            reconstruction=np.asarray(top.reconstruction, np.float32),
        )

    @property
    def k(self) -> int:
        """Features per row."""
        return int(self.index.shape[1]) if self.index.ndim == 2 else 0

    def named(self, feature_names: Sequence[str]) -> Explanation:
        """The same with `names` filled in from the model's feature names."""
        lookup = np.asarray(list(feature_names), dtype=object)
        return replace(self, names=lookup[self.index] if len(lookup) else None)


@dataclass
class ScoreResult:
    """Scores of one input batch, in the batch's row order; `error` is set when rejected."""

    index: int
    row_ids: np.ndarray
    kl: np.ndarray
    recon_nll: np.ndarray
    neg_elbo: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    kl_per_dim: np.ndarray | None = None
    iw_nll: np.ndarray | None = None
    score: str = ""
    threshold: float = math.nan
    model: tuple[str, int] = ("", 0)
    error: VaeClientError | None = None
    rows: int = 0
    explain: Explanation | None = None  # only when an explanation was asked for

    @classmethod
    def empty(
        cls,
        index: int,
        *,
        rows: int = 0,
        model: tuple[str, int] = ("", 0),
        error: VaeClientError | None = None,
    ) -> ScoreResult:
        """A result without scores: an empty batch, or (with `error`) a rejected one."""
        empty32 = np.zeros(0, np.float32)
        return cls(
            index=index,
            row_ids=np.zeros(0, np.int64),
            kl=empty32,
            recon_nll=empty32,
            neg_elbo=empty32,
            p_value=np.zeros(0, np.float64),
            is_anomaly=np.zeros(0, bool),
            model=model,
            error=error,
            rows=rows,
        )

    @property
    def ok(self) -> bool:
        """True when the server scored the batch."""
        return self.error is None

    def __len__(self) -> int:
        return self.rows


@dataclass
class EncodeResult:
    """Posterior parameters (and a draw when requested) of each row."""

    mu: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None
    model: tuple[str, int]


@dataclass
class SampleResult:
    """Generated rows and the latent draws they were decoded from."""

    rows: np.ndarray
    z: np.ndarray
    model: tuple[str, int]


@dataclass
class DriftReport:
    """The drift of some rows (a server's window, a file or a part of one) against a model's
    reference: KL in nats between the moment-matched Gaussians of their posteriors and of the
    validation rows', each latent dimension's marginal KL (nats) and its share of their sum,
    and the p-value (None when the rows are fewer than the null's smallest window, 16)."""

    model: tuple[str, int]
    rows: int
    kl: float
    kl_per_dim: np.ndarray
    share_per_dim: np.ndarray
    p_value: float | None
    window_rows: int = 0  # a server reading: the window's size
    rows_seen: int = 0  # a server reading: rows the version scored since it loaded
    evaluated_at: float = math.nan  # a server reading: Unix time
    reference_rows: int = 0
    null_method: str = ""

    def drifted(self, alpha: float) -> bool:
        """Whether the p-value is below alpha (False without a p-value)."""
        return self.p_value is not None and self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = {
            "model": list(self.model),
            "rows": self.rows,
            "kl": self.kl,
            "kl_per_dim": [float(v) for v in self.kl_per_dim],
            "share_per_dim": [float(v) for v in self.share_per_dim],
            "p_value": self.p_value,
            "reference_rows": self.reference_rows,
            "null_method": self.null_method,
        }
        if self.window_rows:
            out.update(
                window_rows=self.window_rows,
                rows_seen=self.rows_seen,
                evaluated_at=self.evaluated_at,
            )
        return out
