"""Request validation for both protocols, on declared shapes and decoded numpy arrays.

The servicers decode their messages (vae.v1 Tensors; KServe tensors and parameters) and hand
the shapes, arrays and values here. A declared shape is checked before its payload is decoded,
so a request over a limit costs no copy. Every check raises RequestError with a message that
says what to fix; a limit names its setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vaeserve.common.scores import SCORE_NAMES
from vaeserve.server.errors import RequestError, echo, echo_shape
from vaeserve.server.repository import LoadedModel


@dataclass(frozen=True)
class MatrixSpec:
    """A 2-D [n, cols] input of a request, described the way messages name it."""

    what: str  # the input in messages: "rows", "z", "input 'x'"
    cols: int
    col_word: str  # what a column is: "features", "latent dimensions", "columns"
    owner: str  # the model that expects it (LoadedModel.label)
    max_rows: int  # the max_request_rows setting

    @classmethod
    def rows(cls, model: LoadedModel, max_rows: int, what: str = "rows") -> MatrixSpec:
        """Feature rows [n, input_dim]."""
        return cls(what, model.manifest.input_dim, "features", model.label, max_rows)

    @classmethod
    def latent(cls, model: LoadedModel, max_rows: int, what: str = "z") -> MatrixSpec:
        """Latent points [n, latent_dim]."""
        return cls(what, model.manifest.latent_dim, "latent dimensions", model.label, max_rows)

    @classmethod
    def condition(cls, model: LoadedModel, max_rows: int, what: str = "condition") -> MatrixSpec:
        """Condition rows [n, cond_dim]."""
        return cls(what, model.manifest.cond_dim, "columns", model.label, max_rows)


def check_row_count(n: int, max_rows: int, subject: str, advice: str) -> None:
    """n rows within max_request_rows, or RESOURCE_EXHAUSTED ("{subject}; ... {advice}")."""
    if n > max_rows:
        raise RequestError.too_large(
            f"{subject}; this server takes at most {max_rows} rows per request "
            f"(setting max_request_rows); {advice}",
            limit="max_request_rows",
        )


def check_shape(shape: Sequence[int], spec: MatrixSpec) -> None:
    """A declared shape that is 2-D [n, cols] with n within max_rows (before decoding)."""
    shape = list(shape)
    if any(d < 0 for d in shape):
        raise RequestError.invalid(
            f"{spec.what}: shape {echo_shape(shape)} has a negative dimension; send "
            f"[n, {spec.cols}]"
        )
    if len(shape) != 2:
        hint = f"; for one row send shape [1, {spec.cols}]" if len(shape) == 1 else ""
        raise RequestError.invalid(
            f"{spec.what}: shape {echo_shape(shape)} is not 2-D [n, {spec.cols}]{hint}"
        )
    check_row_count(shape[0], spec.max_rows, f"{spec.what} has {shape[0]} rows", "split the batch")
    if shape[1] != spec.cols:
        raise RequestError.invalid(
            f"{spec.what} has {shape[1]} {spec.col_word} per row but {spec.owner} expects "
            f"{spec.cols}"
        )


def finite_float32(a: np.ndarray, what: str) -> np.ndarray:
    """The decoded array as float32, or RequestError counting the rows that hold NaN or inf."""
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, caught below
        a = a.astype(np.float32, copy=False)
    if a.size and not np.isfinite(a).all():
        bad = ~np.isfinite(a).all(axis=1)
        count = int(bad.sum())
        first = int(np.argmax(bad))
        raise RequestError.invalid(
            f"{what}: {count} of {a.shape[0]} rows hold NaN or inf (first at row index "
            f"{first}; values beyond float32 range count as inf); drop or impute those rows"
        )
    return a


def expect_condition(model: LoadedModel, sent: bool) -> bool:
    """Whether to read the request's condition: the model's need, checked against `sent`."""
    m = model.manifest
    if m.cond_dim == 0:
        if sent:
            raise RequestError.invalid(
                f"{model.label} is unconditional (cond_dim 0); leave condition unset"
            )
        return False
    if not sent:
        classes = f" (one-hot over {', '.join(m.condition_classes)})" if m.condition_classes else ""
        raise RequestError.invalid(
            f"{model.label} is conditional: send condition as FLOAT32 [n, {m.cond_dim}]{classes}"
        )
    return True


def condition_rows(cond: np.ndarray, n: int, broadcast: bool = False) -> np.ndarray:
    """One decoded condition row per row ([n, C]); with broadcast, [1, C] is repeated n times."""
    if cond.shape[0] != n:
        if broadcast and cond.shape[0] == 1:
            return np.repeat(cond, n, axis=0)
        also = " or [1, C] for all rows" if broadcast else ""
        raise RequestError.invalid(
            f"condition has {cond.shape[0]} rows but there are {n} rows; send one condition "
            f"row per row{also}"
        )
    return cond


def check_row_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Decoded row ids: one per row, shape [n]."""
    if ids.shape != (n,):
        raise RequestError.invalid(
            f"row_ids has shape {echo_shape(ids.shape)} but rows has {n} rows; send INT64 [{n}]"
        )
    return ids


def check_sample_count(n: int, max_rows: int) -> int:
    """The number of rows to generate: at least 1, within max_request_rows."""
    if n < 1:
        raise RequestError.invalid("n must be at least 1 (the number of rows to generate)")
    check_row_count(n, max_rows, f"n = {n} rows to generate", "ask in several calls")
    return n


def check_score_name(score: str) -> str:
    """One of the score names (kl, recon_nll, neg_elbo)."""
    if score not in SCORE_NAMES:
        raise RequestError.invalid(f"score {echo(score)} is not one of {', '.join(SCORE_NAMES)}")
    return score


def check_threshold(threshold: float) -> float:
    """A finite flag threshold in nats."""
    if not np.isfinite(threshold):
        raise RequestError.invalid("threshold must be a finite number (nats)")
    return float(threshold)


def check_iw_samples(k: int, max_iw_samples: int) -> int:
    """Importance samples per row: 0 (off) up to max_iw_samples."""
    if k < 0:
        raise RequestError.invalid("iw_samples must be >= 0")
    if k > max_iw_samples:
        raise RequestError.too_large(
            f"iw_samples = {k} is over this server's limit of {max_iw_samples} "
            "(setting max_iw_samples)",
            limit="max_iw_samples",
        )
    return k


def check_explain(k: int, max_explain_features: int) -> int:
    """Top features per row an explanation asks for: 0 (none) up to max_explain_features."""
    if k < 0:
        raise RequestError.invalid("explain must be >= 0 (the number of top features per row)")
    if k > max_explain_features:
        raise RequestError.too_large(
            f"explain = {k} top features is over this server's limit of {max_explain_features} "
            "(setting max_explain_features)",
            limit="max_explain_features",
        )
    return k


INT64_MAX = 2**63 - 1


def check_start_offset(start: int, n: int) -> int:
    """A Score batch's start_offset: its row ids start, start + 1, ..., start + n - 1 must all
    be int64."""
    if start + max(n - 1, 0) > INT64_MAX:
        raise RequestError.invalid(
            f"start_offset {start} with {n} rows runs past the largest row id (2**63 - 1); "
            "send a smaller start_offset or row_ids"
        )
    return start


def check_seed(seed: int, what: str = "seed") -> int:
    """A random seed: >= 0."""
    if seed < 0:
        raise RequestError.invalid(f"{what} must be >= 0")
    return seed
