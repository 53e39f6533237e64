"""The vae.v1 VaeService: its messages translated to and from the data plane's calls.

Tensors are decoded by server/vae_codec.py and checked by server/validation.py; the work
(and the random draws, see server/dataplane.py) is the data plane's, shared with KServe v2.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server import validation
from vaeserve.server.call_context import note_call
from vaeserve.server.dataplane import DataPlane
from vaeserve.server.errors import RequestError, echo
from vaeserve.server.repository import LoadedModel
from vaeserve.server.rpc import Answer, done, open_stream, request_error, unary
from vaeserve.server.vae_codec import (
    add_explanation,
    declared_rows,
    drift_response,
    model_ref,
    monitoring,
    read_condition,
    read_matrix,
    read_row_ids,
    schema,
    score_kind,
    score_name,
)
from vaeserve.server.validation import MatrixSpec

__all__ = ["VaeServicer"]

# How a request's rows or z are described (MatrixSpec.rows or .latent, given max_request_rows).
SpecFor = Callable[[LoadedModel, int], MatrixSpec]
# A data-plane call on a model's checked rows (or z) and condition: encode, decode, reconstruct.
GraphCall = Callable[[LoadedModel, np.ndarray, np.ndarray | None], Awaitable[dict[str, np.ndarray]]]


class _StreamModel:
    """The model a Score stream uses: set by its first message that names one, then pinned."""

    def __init__(self) -> None:
        self.requested: tuple[str, int] | None = None
        self.model: LoadedModel | None = None


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """vae.v1.VaeService on a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @property
    def max_rows(self) -> int:
        """The max_request_rows setting."""
        return self.dataplane.settings.max_request_rows

    def _model(self, ref: vae_pb2.ModelRef) -> LoadedModel:
        return self.dataplane.model(ref.name, ref.version)

    def _inputs(
        self, model: LoadedModel, t: vae_pb2.Tensor, condition: vae_pb2.Tensor, spec: SpecFor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The request's rows (or z) as `spec` describes them, and its condition."""
        x = read_matrix(t, spec(model, self.max_rows))
        cond = read_condition(condition, model, x.shape[0], self.max_rows)
        note_call(rows=x.shape[0])  # rows that passed validation, never a declared shape
        return x, cond

    async def _run(
        self, request: Any, t: vae_pb2.Tensor, spec: SpecFor, call: GraphCall
    ) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        """Resolve the request's model, read `t` (its rows or z) and its condition, and run
        the data plane's `call` on them."""
        model = self._model(request.model)
        x, cond = self._inputs(model, t, request.condition, spec)
        return model, await call(model, x, cond)

    # ---- unary RPCs ----------------------------------------------------------------------
    @unary
    async def Encode(
        self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.EncodeResponse:
        """rows -> mu, logvar (and z = mu + sigma * eps when sample is set)."""
        encode = functools.partial(self.dataplane.encode, sample=request.sample, seed=request.seed)
        model, out = await self._run(request, request.rows, MatrixSpec.rows, encode)
        resp = vae_pb2.EncodeResponse(
            model=model_ref(model), mu=to_tensor(out["mu"]), logvar=to_tensor(out["logvar"])
        )
        if request.sample:
            resp.z.CopyFrom(to_tensor(out["z"]))
        return resp

    @unary
    async def Decode(
        self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.DecodeResponse:
        """z -> rows in raw feature units."""
        model, out = await self._run(request, request.z, MatrixSpec.latent, self.dataplane.decode)
        return vae_pb2.DecodeResponse(model=model_ref(model), rows=to_tensor(out["x_hat"]))

    @unary
    async def Sample(
        self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.SampleResponse:
        """n draws z ~ N(0, I) from the seed, decoded."""
        model = self._model(request.model)
        n = validation.check_sample_count(int(request.n), self.max_rows)
        cond = read_condition(request.condition, model, n, self.max_rows, broadcast=True)
        note_call(rows=n)
        out = await self.dataplane.sample(model, n, cond, request.seed)
        return vae_pb2.SampleResponse(
            model=model_ref(model), rows=to_tensor(out["x_hat"]), z=to_tensor(out["z"])
        )

    @unary
    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        """rows -> decoder(posterior mean)."""
        call = self.dataplane.reconstruct
        model, out = await self._run(request, request.rows, MatrixSpec.rows, call)
        return vae_pb2.ReconstructResponse(model=model_ref(model), rows=to_tensor(out["x_hat"]))

    @unary
    async def ModelInfo(
        self, request: vae_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfoResponse:
        """Manifest, schema, loaded versions and the execution providers really in use."""
        model = self._model(request.model)
        return vae_pb2.ModelInfoResponse(
            model=model_ref(model),
            versions=self.dataplane.versions(model.name),
            providers=model.providers,
            device=model.device,
            schema=schema(model),
            manifest_json=model.manifest_json,
            ready=self.dataplane.is_ready(),
            monitoring=monitoring(model),
        )

    @unary
    async def ModelDrift(
        self, request: vae_pb2.ModelDriftRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelDriftResponse:
        """The drift of the rows the model version scored last (its drift window)."""
        model = self._model(request.model)
        return drift_response(model, await self.dataplane.drift(model))

    @unary
    async def ListModels(
        self, request: vae_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ListModelsResponse:
        """Every loaded model with its versions and the newest one."""
        ready = self.dataplane.is_ready()
        return vae_pb2.ListModelsResponse(
            models=[
                vae_pb2.ModelSummary(
                    name=name, versions=versions, latest=max(versions), ready=ready
                )
                for name, versions in self.dataplane.models().items()
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
        pinned = _StreamModel()
        stream = await open_stream(
            self.dataplane,
            context,
            start=lambda req: self._start_batch(req, pinned),
            rows=lambda req: declared_rows(req.rows),
            reject=lambda req, exc: self._error_answer(req, exc, pinned.model),
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
                        f"{echo(pinned.requested[0])} version {pinned.requested[1] or 'newest'}; "
                        "open a new stream for another model"
                    )
            if pinned.model is None:
                name, version = pinned.requested or ("", 0)
                pinned.model = self.dataplane.model(name, version)
            model = pinned.model
        except RequestError as exc:
            return done(self._error_answer(req, exc, pinned.model))
        return asyncio.ensure_future(self._score_batch(req, model))

    def _error_answer(
        self, req: vae_pb2.ScoreRequest, exc: RequestError, model: LoadedModel | None
    ) -> Answer[vae_pb2.ScoreResponse]:
        self.dataplane.metrics.rejected(exc)
        return Answer(
            vae_pb2.ScoreResponse(
                batch_id=req.batch_id,
                error=vae_pb2.Error(code=exc.code.value[0], message=exc.message),
            ),
            model=model.name if model is not None else "",
            code=exc.code,
        )

    async def _score_batch(
        self, req: vae_pb2.ScoreRequest, model: LoadedModel
    ) -> Answer[vae_pb2.ScoreResponse]:
        try:
            resp, rows = await self._score(req, model)
        except Exception as exc:
            return self._error_answer(
                req, request_error(exc, "scoring", f"batch {echo(req.batch_id)}"), model
            )
        return Answer(resp, model=model.name, rows=rows)

    async def _score(
        self, req: vae_pb2.ScoreRequest, model: LoadedModel
    ) -> tuple[vae_pb2.ScoreResponse, int]:
        """The batch's response and its (validated) row count."""
        x, cond = self._inputs(model, req.rows, req.condition, MatrixSpec.rows)
        ids = read_row_ids(req, x.shape[0])
        score = score_name(req.score)
        threshold = float(req.threshold) if req.HasField("threshold") else None
        result = await self.dataplane.score(
            model,
            x,
            cond,
            score,
            threshold,
            iw_samples=int(req.iw_samples),
            seed=req.seed,
            explain=int(req.explain),
        )
        resp = vae_pb2.ScoreResponse(
            batch_id=req.batch_id,
            model=model_ref(model),
            row_ids=to_tensor(ids),
            kl=to_tensor(result.kl),
            recon_nll=to_tensor(result.recon_nll),
            neg_elbo=to_tensor(result.neg_elbo),
            p_value=to_tensor(result.p_value),
            is_anomaly=to_tensor(result.is_anomaly),
            score=score_kind(result.score),
            threshold=result.threshold,
        )
        if req.include_kl_per_dim:
            resp.kl_per_dim.CopyFrom(to_tensor(result.kl_per_dim))
        if result.iw_nll is not None:
            resp.iw_nll.CopyFrom(to_tensor(result.iw_nll))
        if result.explain is not None:
            add_explanation(resp, result.explain)
        return resp, x.shape[0]
