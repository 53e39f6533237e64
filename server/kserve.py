"""KServe v2 / Open Inference Protocol (inference.GRPCInferenceService) on the data plane.

Each loaded model NAME is three inference models (model_version: the version number as a
string, empty for the newest):

| name | inputs | outputs |
|---|---|---|
| NAME (or NAME.scorer) | x FP32 [-1, D], cond [-1, C] | kl, kl_per_dim, recon_nll, neg_elbo, p_value (FP64), is_anomaly (BOOL), iw_nll, explain_* |
| NAME.encoder | x, cond | mu FP32 [-1, L], logvar FP32 [-1, L] |
| NAME.decoder | z FP32 [-1, L], cond | x_hat FP32 [-1, D] |

`cond` exists only for conditional models; iw_nll only with the iw_samples parameter, and
explain_index (INT64 [-1, K]), explain_nll, explain_excess, explain_value and
explain_reconstruction (FP32 [-1, K]) only with the explain parameter (K). Inputs
may be FP32, FP64, FP16, INT64 or INT32 (converted to float32) as raw_input_contents or typed
contents. Outputs come back the way the inputs came (raw bytes or typed contents) unless the
request parameter `binary_data_output` (bool) says otherwise. Scorer request parameters:
`score` ("kl", "recon_nll", "neg_elbo"), `threshold` (nats), `iw_samples`, `seed`, `explain`; the
response parameters `score` and `threshold` say what the flag used. Other parameters (such as
tritonclient's priority or sequence ones) are ignored.

Naming lives in server/kserve_models.py, message decoding and encoding in
server/kserve_codec.py.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata

import grpc
import numpy as np

from vaeserve.proto.inference import grpc_service_pb2 as pb
from vaeserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from vaeserve.server.call_context import note_call
from vaeserve.server.dataplane import DataPlane
from vaeserve.server.errors import RequestError, echo
from vaeserve.server.kserve_codec import (
    add_output,
    declared_rows,
    raw_outputs,
    read_inputs,
    requested_outputs,
    scorer_params,
)
from vaeserve.server.kserve_models import Target, resolve_target
from vaeserve.server.rpc import Answer, open_stream, request_error, unary

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_METHOD = f"/{SERVICE}/ModelStreamInfer"
PLATFORM = "onnxruntime_onnx"


def server_version() -> str:
    """The installed vaeserve version."""
    try:
        return metadata.version("vaeserve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def target(self, name: str, version: str) -> Target:
        """Resolve NAME / NAME.encoder / NAME.decoder (NAME.scorer too) and a version string."""
        return resolve_target(self.dataplane, name, version)

    # ---- health and metadata -------------------------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """True while the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """True once every model found at start is warm, until shutdown begins, while at least
        one model is loaded (as grpc.health.v1's overall status)."""
        return pb.ServerReadyResponse(
            ready=self.dataplane.is_ready() and bool(self.dataplane.models())
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """True when the model (and version) is loaded and the server is ready."""
        try:
            self.target(request.name, request.version)
        except RequestError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and request.version.strip():
                await context.abort(exc.code, exc.message)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.dataplane.is_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """Name, version and extensions."""
        return pb.ServerMetadataResponse(
            name="vaeserve", version=server_version(), extensions=["parameters"]
        )

    @unary
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """Versions, platform, inputs and outputs of one inference model."""
        t = self.target(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=t.name,
            versions=[str(v) for v in self.dataplane.versions(t.model.name)],
            platform=PLATFORM,
            inputs=[s.metadata() for s in t.inputs()],
            outputs=[s.metadata() for s in t.outputs()],
        )

    # ---- inference -----------------------------------------------------------------------
    @unary
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One request, one response; errors are the call's status."""
        target = self.target(request.model_name, request.model_version)
        resp, _ = await self._infer(request, target)
        return resp

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order; a failed request gets error_message and the
        stream goes on. Up to stream_pipeline_depth requests run at once."""
        stream = await open_stream(
            self.dataplane,
            context,
            start=self._stream_answer,
            rows=declared_rows,
            reject=self._stream_error,
        )
        async for resp in stream.run(request_iterator):
            yield resp

    async def _stream_answer(
        self, req: pb.ModelInferRequest
    ) -> Answer[pb.ModelStreamInferResponse]:
        target: Target | None = None
        try:
            self.dataplane.check_ready()
            target = self.target(req.model_name, req.model_version)
            resp, rows = await self._infer(req, target)
        except Exception as exc:
            answer = self._stream_error(
                req, request_error(exc, "inference", f"request {echo(req.id)}")
            )
            answer.model = target.name if target is not None else ""
            return answer
        return Answer(
            pb.ModelStreamInferResponse(infer_response=resp),
            model=resp.model_name,
            rows=rows,
        )

    def _stream_error(
        self, req: pb.ModelInferRequest, exc: RequestError
    ) -> Answer[pb.ModelStreamInferResponse]:
        self.dataplane.metrics.rejected(exc)
        return Answer(
            pb.ModelStreamInferResponse(
                error_message=f"{exc.code.name}: {exc.message}",
                infer_response=pb.ModelInferResponse(
                    model_name=req.model_name, model_version=req.model_version, id=req.id
                ),
            ),
            code=exc.code,
        )

    async def _infer(
        self, req: pb.ModelInferRequest, t: Target
    ) -> tuple[pb.ModelInferResponse, int]:
        """The response to one request and its (validated) row count."""
        note_call(model=t.name)
        model = t.model
        rows, cond = read_inputs(req, t, self.dataplane.settings.max_request_rows)
        note_call(rows=rows.shape[0])  # rows that passed validation, never a declared shape
        resp_params: dict[str, pb.InferParameter] = {}
        results: dict[str, np.ndarray]
        if t.graph == "scorer":
            p = scorer_params(req.parameters)
            r = await self.dataplane.score(
                model, rows, cond, p.score, p.threshold, p.iw_samples, p.seed, p.explain
            )
            results = {
                "kl": r.kl,
                "kl_per_dim": r.kl_per_dim,
                "recon_nll": r.recon_nll,
                "neg_elbo": r.neg_elbo,
                "p_value": r.p_value,
                "is_anomaly": r.is_anomaly,
            }
            if r.iw_nll is not None:
                results["iw_nll"] = r.iw_nll
            if r.explain is not None:
                results["explain_index"] = r.explain.index.astype(np.int64, copy=False)
                for name in ("nll", "excess", "value", "reconstruction"):
                    results[f"explain_{name}"] = np.asarray(getattr(r.explain, name), np.float32)
            resp_params["score"] = pb.InferParameter(string_param=r.score)
            resp_params["threshold"] = pb.InferParameter(double_param=r.threshold)
        elif t.graph == "encoder":
            results = await self.dataplane.encode(model, rows, cond)
        else:
            results = await self.dataplane.decode(model, rows, cond)
        names = requested_outputs(req, t, results)
        raw = raw_outputs(req)
        resp = pb.ModelInferResponse(
            model_name=t.name, model_version=str(model.version), id=req.id, parameters=resp_params
        )
        for name in names:
            add_output(resp, name, np.asarray(results[name]), raw)
        return resp, rows.shape[0]
