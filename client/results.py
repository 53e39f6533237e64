"""What VaeClient's calls hand back: scores of one batch, posteriors, generated rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaeserve.client.errors import VaeClientError


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
