"""vae.v1 messages to and from numpy: request tensors decoded and checked, ScoreKinds, refs,
explanations, ModelInfo's schema and monitoring, drift readings.

Decoding checks what only a vae.v1 Tensor can get wrong (missing, dtype, byte count) and
leaves shapes, limits and values to server/validation.py.
"""

from __future__ import annotations

import numpy as np

from vaeserve.common.explain import TopFeatures
from vaeserve.common.scores import KIND_NAMES, SCORE_KINDS
from vaeserve.common.tensors import TensorError, from_tensor, is_set, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import validation
from vaeserve.server.errors import RequestError
from vaeserve.server.monitoring import DriftReading
from vaeserve.server.repository import LoadedModel
from vaeserve.server.validation import MatrixSpec

_NUMERIC = {vae_pb2.FLOAT32, vae_pb2.FLOAT64, vae_pb2.FLOAT16, vae_pb2.INT64}


def dtype_name(dtype: int) -> str:
    """The DataType's name, or "unknown DataType N"."""
    try:
        return vae_pb2.DataType.Name(dtype)
    except ValueError:
        return f"unknown DataType {dtype}"


def declared_rows(t: vae_pb2.Tensor) -> int:
    """Rows a tensor says it carries (its first dimension; 0 when it has none)."""
    return max(0, int(t.shape[0])) if len(t.shape) else 0


def _decode(t: vae_pb2.Tensor, what: str) -> np.ndarray:
    try:
        return from_tensor(t, what)
    except TensorError as exc:
        raise RequestError.invalid(str(exc)) from None


def read_matrix(t: vae_pb2.Tensor, spec: MatrixSpec) -> np.ndarray:
    """A finite float32 [n, cols] array from a Tensor, or RequestError saying what to fix."""
    if not is_set(t):
        raise RequestError.invalid(
            f"{spec.what} is missing: send a FLOAT32 tensor of shape [n, {spec.cols}] for "
            f"{spec.owner}"
        )
    if t.dtype not in _NUMERIC:
        raise RequestError.invalid(
            f"{spec.what}: dtype {dtype_name(t.dtype)} is not accepted; send FLOAT32 "
            "(FLOAT64, FLOAT16 and INT64 are converted to float32)"
        )
    validation.check_shape(t.shape, spec)
    return validation.finite_float32(_decode(t, spec.what), spec.what)


def read_condition(
    t: vae_pb2.Tensor, model: LoadedModel, n: int, max_rows: int, broadcast: bool = False
) -> np.ndarray | None:
    """The condition rows a conditional model needs ([n, C]; [1, C] too when broadcast)."""
    if not validation.expect_condition(model, is_set(t)):
        return None
    cond = read_matrix(t, MatrixSpec.condition(model, max_rows))
    return validation.condition_rows(cond, n, broadcast)


def read_row_ids(req: vae_pb2.ScoreRequest, n: int) -> np.ndarray:
    """The request's row_ids (INT64 [n]), or start_offset, start_offset + 1, ..."""
    if not is_set(req.row_ids):
        start = validation.check_start_offset(req.start_offset, n)
        return np.arange(start, start + n, dtype=np.int64)
    if req.row_ids.dtype != vae_pb2.INT64:
        raise RequestError.invalid(
            f"row_ids: dtype {dtype_name(req.row_ids.dtype)} is not accepted; send INT64"
        )
    return validation.check_row_ids(_decode(req.row_ids, "row_ids"), n)


def score_name(kind: int) -> str | None:
    """A ScoreKind's score name; None for SCORE_KIND_UNSPECIFIED (the model's default)."""
    if kind == vae_pb2.SCORE_KIND_UNSPECIFIED:
        return None
    if kind not in KIND_NAMES:
        raise RequestError.invalid(
            f"score {kind} is not a ScoreKind; use KL, RECON_NLL or NEG_ELBO"
        )
    return KIND_NAMES[kind]


def score_kind(name: str) -> int:
    """A score name's ScoreKind (SCORE_KIND_UNSPECIFIED for an unknown name)."""
    return SCORE_KINDS.get(name, vae_pb2.SCORE_KIND_UNSPECIFIED)


def model_ref(model: LoadedModel) -> vae_pb2.ModelRef:
    """The ModelRef naming a loaded version."""
    return vae_pb2.ModelRef(name=model.name, version=model.version)


def schema(model: LoadedModel) -> vae_pb2.Schema:
    """ModelInfo's Schema: dimensions, names, likelihood, default score and thresholds."""
    m = model.manifest
    cal = m.calibration
    return vae_pb2.Schema(
        input_dim=m.input_dim,
        latent_dim=m.latent_dim,
        cond_dim=m.cond_dim,
        feature_names=list(m.feature_names),
        condition_classes=[str(c) for c in (m.condition_classes or [])],
        likelihood=m.likelihood,
        default_score=score_kind(cal.default_score),
        thresholds={k: float(v) for k, v in cal.thresholds.items()},
    )


def add_explanation(resp: vae_pb2.ScoreResponse, top: TopFeatures) -> None:
    """ScoreResponse's explain_* tensors [n, K]: INT64 indices, FLOAT32 the rest."""
    resp.explain_index.CopyFrom(to_tensor(top.index.astype(np.int64, copy=False)))
    for name in ("nll", "excess", "value", "reconstruction"):
        values = np.asarray(getattr(top, name), np.float32)
        getattr(resp, f"explain_{name}").CopyFrom(to_tensor(values))


def monitoring(model: LoadedModel) -> vae_pb2.Monitoring:
    """ModelInfo's Monitoring: whether explanations and a drift window are there, and why not."""
    mon = model.monitoring
    return vae_pb2.Monitoring(
        explain=mon.explain_baseline is not None,
        drift=mon.drift is not None,
        drift_window_rows=model.drift_window_rows,
        unavailable="; ".join(mon.unavailable[k] for k in sorted(mon.unavailable)),
    )


def drift_response(model: LoadedModel, reading: DriftReading) -> vae_pb2.ModelDriftResponse:
    """A drift reading as ModelDriftResponse (p_value unset when there is none)."""
    resp = vae_pb2.ModelDriftResponse(
        model=model_ref(model),
        window_rows=reading.window_rows,
        rows=reading.rows,
        rows_seen=reading.rows_seen,
        kl=reading.kl,
        kl_per_dim=reading.kl_per_dim.tolist(),
        share_per_dim=reading.share_per_dim.tolist(),
        evaluated_at=reading.evaluated_at,
        reference_rows=reading.reference_rows,
        null_method=reading.null_method,
    )
    if reading.p_value is not None:
        resp.p_value = reading.p_value
    return resp
