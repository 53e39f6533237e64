"""The vae.v1 VaeService: its messages translated to and from the shared model operations.

All per-batch work is numpy on whole arrays (server/ops.py, shared with the KServe v2
servicer). Random draws use numpy's Generator(PCG64(seed)) in float64, cast to float32, so a
client can reproduce them:
  Encode (sample=true): eps = standard_normal((n, latent_dim)); z = mu + exp(logvar / 2) * eps
  Sample:               z = standard_normal((n, latent_dim))
  Score (iw_samples=K): noise = standard_normal((K, n, latent_dim))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np

from vaeserve.common.scores import KIND_NAMES, SCORE_KINDS
from vaeserve.common.tensors import TensorError, from_tensor, is_set, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.errors import RequestError
from vaeserve.server.observability import Metrics, note_call
from vaeserve.server.ops import (
    Answer,
    ModelOps,
    RequestStream,
    check_shape,
    done,
    draw_normal,
    finite_float32,
    label,
    resolve_condition,
    unary,
)
from vaeserve.server.repository import LoadedModel, ModelRepository
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

__all__ = ["VaeServicer", "draw_normal", "read_matrix"]

_NUMERIC = {vae_pb2.FLOAT32, vae_pb2.FLOAT64, vae_pb2.FLOAT16, vae_pb2.INT64}


def _dtype_name(dtype: int) -> str:
    try:
        return vae_pb2.DataType.Name(dtype)
    except ValueError:
        return f"unknown DataType {dtype}"


def read_matrix(
    t: vae_pb2.Tensor, what: str, cols: int, col_word: str, owner: str, max_rows: int
) -> np.ndarray:
    """A finite float32 [n, cols] array from a Tensor, or RequestError saying what to fix."""
    if not is_set(t):
        raise RequestError.invalid(
            f"{what} is missing: send a FLOAT32 tensor of shape [n, {cols}] for {owner}"
        )
    if t.dtype not in _NUMERIC:
        raise RequestError.invalid(
            f"{what}: dtype {_dtype_name(t.dtype)} is not accepted; send FLOAT32 "
            "(FLOAT64, FLOAT16 and INT64 are converted to float32)"
        )
    check_shape(list(t.shape), what, cols, col_word, owner, max_rows)
    try:
        a = from_tensor(t, what)
    except TensorError as exc:
        raise RequestError.invalid(str(exc)) from None
    return finite_float32(a, what)


def read_condition(
    t: vae_pb2.Tensor, model: LoadedModel, n: int, max_rows: int, broadcast: bool = False
) -> np.ndarray | None:
    """The condition rows a conditional model needs ([n, C]; [1, C] too when broadcast)."""
    return resolve_condition(
        model,
        n,
        is_set(t),
        lambda: read_matrix(
            t, "condition", model.manifest.cond_dim, "columns", label(model), max_rows
        ),
        broadcast,
    )


def _declared_rows(req: vae_pb2.ScoreRequest) -> int:
    """Rows a ScoreRequest says it carries (its rows tensor's first dimension)."""
    return max(0, int(req.rows.shape[0])) if len(req.rows.shape) else 0


def _ref(model: LoadedModel) -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=model.name, version=model.version)


class _StreamModel:
    """The model a Score stream uses: set by its first message that names one, then pinned."""

    def __init__(self) -> None:
        self.requested: tuple[str, int] | None = None
        self.model: LoadedModel | None = None


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """vae.v1.VaeService on a ModelRepository; `is_ready` says whether models are loaded."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        is_ready: Callable[[], bool] = lambda: True,
        ops: ModelOps | None = None,
    ) -> None:
        self.repo = repository
        self.settings = settings
        self.is_ready = is_ready
        self.ops = ops or ModelOps(repository, settings, Metrics())

    def _check_ready(self) -> None:
        if not self.is_ready():
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the server is starting or stopping (models not ready); retry shortly",
            )

    def _model(self, ref: vae_pb2.ModelRef) -> LoadedModel:
        return self.ops.model(ref.name, ref.version)

    def _rows(self, t: vae_pb2.Tensor, model: LoadedModel, what: str = "rows") -> np.ndarray:
        m = model.manifest
        note_call(rows=max(0, int(t.shape[0])) if len(t.shape) else 0)  # what was sent
        return read_matrix(
            t, what, m.input_dim, "features", label(model), self.settings.max_request_rows
        )

    # ---- unary RPCs ----------------------------------------------------------------------
    @unary
    async def Encode(
        self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.EncodeResponse:
        """rows -> mu, logvar (and z = mu + sigma * eps when sample is set)."""
        model = self._model(request.model)
        x = self._rows(request.rows, model)
        n = x.shape[0]
        cond = read_condition(request.condition, model, n, self.settings.max_request_rows)
        out = await self.ops.encode(model, x, cond)
        resp = vae_pb2.EncodeResponse(
            model=_ref(model), mu=to_tensor(out["mu"]), logvar=to_tensor(out["logvar"])
        )
        if request.sample:
            eps = draw_normal(request.seed, out["mu"].shape)
            z = out["mu"] + np.exp(0.5 * out["logvar"]) * eps
            resp.z.CopyFrom(to_tensor(z.astype(np.float32, copy=False)))
        return resp

    @unary
    async def Decode(
        self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.DecodeResponse:
        """z -> rows in raw feature units."""
        model = self._model(request.model)
        m = model.manifest
        note_call(rows=max(0, int(request.z.shape[0])) if len(request.z.shape) else 0)
        z = read_matrix(
            request.z,
            "z",
            m.latent_dim,
            "latent dimensions",
            label(model),
            self.settings.max_request_rows,
        )
        n = z.shape[0]
        cond = read_condition(request.condition, model, n, self.settings.max_request_rows)
        out = await self.ops.decode(model, z, cond)
        return vae_pb2.DecodeResponse(model=_ref(model), rows=to_tensor(out["x_hat"]))

    @unary
    async def Sample(
        self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.SampleResponse:
        """n draws z ~ N(0, I) from the seed, decoded."""
        model = self._model(request.model)
        n = int(request.n)
        note_call(rows=n)
        if n < 1:
            raise RequestError.invalid("n must be at least 1 (the number of rows to generate)")
        if n > self.settings.max_request_rows:
            raise RequestError.too_large(
                f"n = {n} is over this server's limit of {self.settings.max_request_rows} rows "
                "per request (setting max_request_rows); ask in several calls",
                limit="max_request_rows",
            )
        cond = read_condition(
            request.condition, model, n, self.settings.max_request_rows, broadcast=True
        )
        z = draw_normal(request.seed, (n, model.manifest.latent_dim))
        out = await self.ops.decode(model, z, cond)
        return vae_pb2.SampleResponse(
            model=_ref(model), rows=to_tensor(out["x_hat"]), z=to_tensor(z)
        )

    @unary
    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        """rows -> decoder(posterior mean)."""
        model = self._model(request.model)
        x = self._rows(request.rows, model)
        n = x.shape[0]
        cond = read_condition(request.condition, model, n, self.settings.max_request_rows)
        model.batcher("decoder")  # FAILED_PRECONDITION before any work when it is missing
        enc = await self.ops.encode(model, x, cond)
        out = await self.ops.decode(model, enc["mu"], cond)
        return vae_pb2.ReconstructResponse(model=_ref(model), rows=to_tensor(out["x_hat"]))

    @unary
    async def ModelInfo(
        self, request: vae_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfoResponse:
        """Manifest, schema, loaded versions and the execution providers really in use."""
        model = self._model(request.model)
        m = model.manifest
        cal = m.calibration
        schema = vae_pb2.Schema(
            input_dim=m.input_dim,
            latent_dim=m.latent_dim,
            cond_dim=m.cond_dim,
            feature_names=list(m.feature_names),
            condition_classes=[str(c) for c in (m.condition_classes or [])],
            likelihood=m.likelihood,
            default_score=SCORE_KINDS.get(cal.default_score, vae_pb2.SCORE_KIND_UNSPECIFIED),
            thresholds={k: float(v) for k, v in cal.thresholds.items()},
        )
        versions = sorted(self.repo.snapshot().get(model.name, {}))
        return vae_pb2.ModelInfoResponse(
            model=_ref(model),
            versions=versions,
            providers=model.providers,
            device=model.device,
            schema=schema,
            manifest_json=model.manifest_json,
            ready=self.is_ready(),
        )

    @unary
    async def ListModels(
        self, request: vae_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ListModelsResponse:
        """Every loaded model with its versions and the newest one."""
        ready = self.is_ready()
        return vae_pb2.ListModelsResponse(
            models=[
                vae_pb2.ModelSummary(
                    name=name, versions=sorted(versions), latest=max(versions), ready=ready
                )
                for name, versions in sorted(self.repo.snapshot().items())
            ]
        )

    # ---- Score stream --------------------------------------------------------------------
    async def Score(
        self,
        request_iterator: AsyncIterator[vae_pb2.ScoreRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[vae_pb2.ScoreResponse]:
        """One response per request, in order; up to stream_pipeline_depth batches in flight.

        A bad batch is answered with ScoreResponse.error and the stream goes on.
        """
        try:
            self._check_ready()
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        pinned = _StreamModel()
        stream: RequestStream[vae_pb2.ScoreRequest, vae_pb2.ScoreResponse] = RequestStream(
            start=lambda req: self._start_batch(req, pinned),
            rows=_declared_rows,
            reject=lambda req, exc: self._error_answer(req, exc, pinned),
            depth=self.settings.stream_pipeline_depth,
            max_inflight_rows=self.settings.max_stream_inflight_rows,
            metrics=self.ops.metrics,
        )
        async for resp in stream.run(request_iterator):
            yield resp

    def _start_batch(self, req: vae_pb2.ScoreRequest, pinned: _StreamModel) -> asyncio.Future:
        """Resolve the stream's model in message order, then score the batch in a task."""
        try:
            if req.HasField("model") and (req.model.name or req.model.version):
                ref = (req.model.name, int(req.model.version))
                if pinned.requested is None:
                    pinned.requested = ref
                elif ref != pinned.requested:
                    raise RequestError.invalid(
                        f"model may only be set on a stream's first message; this stream uses "
                        f"{pinned.requested[0]!r} version {pinned.requested[1] or 'newest'}; "
                        "open a new stream for another model"
                    )
            if pinned.model is None:
                name, version = pinned.requested or ("", 0)
                pinned.model = self.repo.get(name, version)
            model = pinned.model
        except RequestError as exc:
            return done(self._error_answer(req, exc, pinned))
        return asyncio.ensure_future(self._score_batch(req, model))

    def _error_answer(
        self, req: vae_pb2.ScoreRequest, exc: RequestError, pinned: _StreamModel | None = None
    ) -> Answer[vae_pb2.ScoreResponse]:
        self.ops.metrics.rejected(exc)
        model = pinned.model.name if pinned is not None and pinned.model is not None else ""
        return Answer(
            vae_pb2.ScoreResponse(
                batch_id=req.batch_id,
                error=vae_pb2.Error(code=exc.code.value[0], message=exc.message),
            ),
            model=model,
            code=exc.code,
            rows=_declared_rows(req),
        )

    async def _score_batch(
        self, req: vae_pb2.ScoreRequest, model: LoadedModel
    ) -> Answer[vae_pb2.ScoreResponse]:
        try:
            resp = await self._score(req, model)
            return Answer(resp, model=model.name, rows=_declared_rows(req))
        except RequestError as exc:
            answer = self._error_answer(req, exc)
            answer.model = model.name
            return answer
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("scoring batch %r failed", req.batch_id)
            answer = self._error_answer(
                req, RequestError(grpc.StatusCode.INTERNAL, f"scoring failed: {exc}")
            )
            answer.model = model.name
            return answer

    async def _score(self, req: vae_pb2.ScoreRequest, model: LoadedModel) -> vae_pb2.ScoreResponse:
        m = model.manifest
        x = self._rows(req.rows, model)
        n = x.shape[0]
        cond = read_condition(req.condition, model, n, self.settings.max_request_rows)
        if is_set(req.row_ids):
            if req.row_ids.dtype != vae_pb2.INT64:
                raise RequestError.invalid(
                    f"row_ids: dtype {_dtype_name(req.row_ids.dtype)} is not accepted; send INT64"
                )
            try:
                ids = from_tensor(req.row_ids, "row_ids")
            except TensorError as exc:
                raise RequestError.invalid(str(exc)) from None
            if ids.shape != (n,):
                raise RequestError.invalid(
                    f"row_ids has shape {list(ids.shape)} but rows has {n} rows; send INT64 [{n}]"
                )
        else:
            ids = np.arange(req.start_offset, req.start_offset + n, dtype=np.int64)
        if req.score == vae_pb2.SCORE_KIND_UNSPECIFIED:
            score = m.calibration.default_score
        elif req.score in KIND_NAMES:
            score = KIND_NAMES[req.score]
        else:
            raise RequestError.invalid(
                f"score {req.score} is not a ScoreKind; use KL, RECON_NLL or NEG_ELBO"
            )
        threshold = float(req.threshold) if req.HasField("threshold") else None
        result = await self.ops.score(
            model, x, cond, score, threshold, iw_samples=int(req.iw_samples), seed=req.seed
        )
        resp = vae_pb2.ScoreResponse(
            batch_id=req.batch_id,
            model=_ref(model),
            row_ids=to_tensor(ids),
            kl=to_tensor(result.kl),
            recon_nll=to_tensor(result.recon_nll),
            neg_elbo=to_tensor(result.neg_elbo),
            p_value=to_tensor(result.p_value),
            is_anomaly=to_tensor(result.is_anomaly),
            score=SCORE_KINDS[result.score],
            threshold=result.threshold,
        )
        if req.include_kl_per_dim:
            resp.kl_per_dim.CopyFrom(to_tensor(result.kl_per_dim))
        if result.iw_nll is not None:
            resp.iw_nll.CopyFrom(to_tensor(result.iw_nll))
        return resp
