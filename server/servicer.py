"""The vae.v1 VaeService: request checks, calls into the batched graphs, response packing.

All per-batch work is numpy on whole arrays. Random draws use numpy's Generator(PCG64(seed))
in float64, cast to float32, so a client can reproduce them:
  Encode (sample=true): eps = standard_normal((n, latent_dim)); z = mu + exp(logvar / 2) * eps
  Sample:               z = standard_normal((n, latent_dim))
  Score (iw_samples=K): noise = standard_normal((K, n, latent_dim))
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from vaeserve.common.tensors import TensorError, from_tensor, is_set, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.errors import RequestError
from vaeserve.server.repository import LoadedModel, ModelRepository
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

SCORE_KIND_NAMES = {vae_pb2.KL: "kl", vae_pb2.RECON_NLL: "recon_nll", vae_pb2.NEG_ELBO: "neg_elbo"}
SCORE_NAME_KINDS = {v: k for k, v in SCORE_KIND_NAMES.items()}
_NUMERIC = {vae_pb2.FLOAT32, vae_pb2.FLOAT64, vae_pb2.FLOAT16, vae_pb2.INT64}

R = TypeVar("R")


def draw_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws from Generator(PCG64(seed)) (float64 draws, cast)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal(shape).astype(np.float32)


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
    shape = list(t.shape)
    if len(shape) != 2:
        hint = f"; for one row send shape [1, {cols}]" if len(shape) == 1 else ""
        raise RequestError.invalid(f"{what}: shape {shape} is not 2-D [n, {cols}]{hint}")
    if shape[0] > max_rows:
        raise RequestError.too_large(
            f"{what} has {shape[0]} rows; this server takes at most {max_rows} rows per "
            "request (setting max_request_rows); split the batch"
        )
    if shape[1] != cols:
        raise RequestError.invalid(
            f"{what} has {shape[1]} {col_word} per row but {owner} expects {cols}"
        )
    try:
        a = from_tensor(t, what)
    except TensorError as exc:
        raise RequestError.invalid(str(exc)) from None
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


def _label(model: LoadedModel) -> str:
    return f"model {model.name!r} version {model.version}"


def read_condition(
    t: vae_pb2.Tensor, model: LoadedModel, n: int, max_rows: int, broadcast: bool = False
) -> np.ndarray | None:
    """The condition rows a conditional model needs ([n, C]; [1, C] too when broadcast)."""
    m = model.manifest
    if m.cond_dim == 0:
        if is_set(t):
            raise RequestError.invalid(
                f"{_label(model)} is unconditional (cond_dim 0); leave condition unset"
            )
        return None
    classes = f" (one-hot over {', '.join(m.condition_classes)})" if m.condition_classes else ""
    if not is_set(t):
        raise RequestError.invalid(
            f"{_label(model)} is conditional: send condition as FLOAT32 [n, {m.cond_dim}]{classes}"
        )
    c = read_matrix(t, "condition", m.cond_dim, "columns", _label(model), max_rows)
    if c.shape[0] != n:
        if broadcast and c.shape[0] == 1:
            return np.repeat(c, n, axis=0)
        also = " or [1, C] for all rows" if broadcast else ""
        raise RequestError.invalid(
            f"condition has {c.shape[0]} rows but there are {n} rows; send one condition "
            f"row per row{also}"
        )
    return c


def _feeds(x_name: str, x: np.ndarray, cond: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {x_name: x}
    if cond is not None:
        feeds["cond"] = cond
    return feeds


def _ref(model: LoadedModel) -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=model.name, version=model.version)


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Turn RequestError into a status and unexpected errors into INTERNAL (logged)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            self._check_ready()
            return await fn(self, request, context)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed: {exc}")
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


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
    ) -> None:
        self.repo = repository
        self.settings = settings
        self.is_ready = is_ready

    def _check_ready(self) -> None:
        if not self.is_ready():
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the server is starting or stopping (models not ready); retry shortly",
            )

    def _model(self, ref: vae_pb2.ModelRef) -> LoadedModel:
        return self.repo.get(ref.name, ref.version)

    def _rows(self, t: vae_pb2.Tensor, model: LoadedModel, what: str = "rows") -> np.ndarray:
        m = model.manifest
        return read_matrix(
            t, what, m.input_dim, "features", _label(model), self.settings.max_request_rows
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
        out = await model.batcher("encoder").run(_feeds("x", x, cond), n)
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
        z = read_matrix(
            request.z,
            "z",
            m.latent_dim,
            "latent dimensions",
            _label(model),
            self.settings.max_request_rows,
        )
        n = z.shape[0]
        cond = read_condition(request.condition, model, n, self.settings.max_request_rows)
        out = await model.batcher("decoder").run(_feeds("z", z, cond), n)
        return vae_pb2.DecodeResponse(model=_ref(model), rows=to_tensor(out["x_hat"]))

    @unary
    async def Sample(
        self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.SampleResponse:
        """n draws z ~ N(0, I) from the seed, decoded."""
        model = self._model(request.model)
        n = int(request.n)
        if n < 1:
            raise RequestError.invalid("n must be at least 1 (the number of rows to generate)")
        if n > self.settings.max_request_rows:
            raise RequestError.too_large(
                f"n = {n} is over this server's limit of {self.settings.max_request_rows} rows "
                "per request (setting max_request_rows); ask in several calls"
            )
        cond = read_condition(
            request.condition, model, n, self.settings.max_request_rows, broadcast=True
        )
        z = draw_normal(request.seed, (n, model.manifest.latent_dim))
        out = await model.batcher("decoder").run(_feeds("z", z, cond), n)
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
        decoder = model.batcher("decoder")
        enc = await model.batcher("encoder").run(_feeds("x", x, cond), n)
        out = await decoder.run(_feeds("z", enc["mu"], cond), n)
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
            default_score=SCORE_NAME_KINDS.get(cal.default_score, vae_pb2.SCORE_KIND_UNSPECIFIED),
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
        queue: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(
            maxsize=self.settings.stream_pipeline_depth
        )
        read_error: list[BaseException] = []

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    await queue.put(self._start_batch(req, pinned))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the call broke (e.g. cancelled by the peer)
                read_error.append(exc)
            await queue.put(None)

        reader_task = asyncio.create_task(reader(), name="score-reader")
        try:
            while True:
                fut = await queue.get()
                if fut is None:
                    break
                yield await fut
            if read_error:
                raise read_error[0]
        finally:
            reader_task.cancel()
            while not queue.empty():
                fut = queue.get_nowait()
                if fut is not None:
                    fut.cancel()

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
            return _done(self._error_response(req, exc))
        return asyncio.ensure_future(self._score_batch(req, model))

    def _error_response(
        self, req: vae_pb2.ScoreRequest, exc: RequestError
    ) -> vae_pb2.ScoreResponse:
        return vae_pb2.ScoreResponse(
            batch_id=req.batch_id,
            error=vae_pb2.Error(code=exc.code.value[0], message=exc.message),
        )

    async def _score_batch(
        self, req: vae_pb2.ScoreRequest, model: LoadedModel
    ) -> vae_pb2.ScoreResponse:
        try:
            return await self._score(req, model)
        except RequestError as exc:
            return self._error_response(req, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("scoring batch %r failed", req.batch_id)
            return self._error_response(
                req, RequestError(grpc.StatusCode.INTERNAL, f"scoring failed: {exc}")
            )

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
        elif req.score in SCORE_KIND_NAMES:
            score = SCORE_KIND_NAMES[req.score]
        else:
            raise RequestError.invalid(
                f"score {req.score} is not a ScoreKind; use KL, RECON_NLL or NEG_ELBO"
            )
        if req.HasField("threshold"):
            threshold = float(req.threshold)
            if not np.isfinite(threshold):
                raise RequestError.invalid("threshold must be a finite number (nats)")
        elif score in m.calibration.thresholds:
            threshold = float(m.calibration.thresholds[score])
        else:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_label(model)} has no calibrated threshold for {score}; send threshold",
            )
        k = int(req.iw_samples)
        if k > self.settings.max_iw_samples:
            raise RequestError.too_large(
                f"iw_samples = {k} is over this server's limit of {self.settings.max_iw_samples} "
                "(setting max_iw_samples)"
            )
        feeds = _feeds("x", x, cond)
        jobs = [model.batcher("scorer").run(feeds, n)]
        if k > 0:
            noise = draw_normal(req.seed, (k, n, m.latent_dim))
            jobs.append(model.batcher("iw_scorer").run({**feeds, "noise": noise}, n, key=k))
        outs = await asyncio.gather(*jobs)
        out = outs[0]
        flag = np.asarray(out[score])
        pvalues = model.pvalues.get(score)
        p = pvalues(flag) if pvalues is not None else np.full(n, np.nan, np.float64)
        resp = vae_pb2.ScoreResponse(
            batch_id=req.batch_id,
            model=_ref(model),
            row_ids=to_tensor(ids),
            kl=to_tensor(out["kl"]),
            recon_nll=to_tensor(out["recon_nll"]),
            neg_elbo=to_tensor(out["neg_elbo"]),
            p_value=to_tensor(np.asarray(p, np.float64)),
            is_anomaly=to_tensor(flag > threshold),
            score=SCORE_NAME_KINDS[score],
            threshold=threshold,
        )
        if req.include_kl_per_dim:
            resp.kl_per_dim.CopyFrom(to_tensor(out["kl_per_dim"]))
        if k > 0:
            resp.iw_nll.CopyFrom(to_tensor(outs[1]["iw_nll"]))
        return resp


def _done(value: Any) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
