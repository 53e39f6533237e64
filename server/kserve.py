"""KServe v2 / Open Inference Protocol (inference.GRPCInferenceService) on the shared model ops.

Each loaded model NAME is three inference models (model_version: the version number as a
string, empty for the newest):

| name | inputs | outputs |
|---|---|---|
| NAME (or NAME.scorer) | x FP32 [-1, D], cond [-1, C] | kl, kl_per_dim, recon_nll, neg_elbo, p_value (FP64), is_anomaly (BOOL), iw_nll |
| NAME.encoder | x, cond | mu FP32 [-1, L], logvar FP32 [-1, L] |
| NAME.decoder | z FP32 [-1, L], cond | x_hat FP32 [-1, D] |

`cond` exists only for conditional models; iw_nll only with the iw_samples parameter. Inputs
may be FP32, FP64, FP16, INT64 or INT32 (converted to float32) as raw_input_contents or typed
contents. Outputs come back the way the inputs came (raw bytes or typed contents) unless the
request parameter `binary_data_output` (bool) says otherwise. Scorer request parameters:
`score` ("kl", "recon_nll", "neg_elbo"), `threshold` (nats), `iw_samples`, `seed`; the
response parameters `score` and `threshold` say what the flag used. Other parameters (such as
tritonclient's priority or sequence ones) are ignored.
"""  # noqa: E501

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
import numpy as np

from vaeserve.proto.inference import grpc_service_pb2 as pb
from vaeserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from vaeserve.server.errors import RequestError
from vaeserve.server.observability import note_call
from vaeserve.server.ops import (
    Answer,
    ModelOps,
    RequestStream,
    check_shape,
    finite_float32,
    label,
    resolve_condition,
    unary,
)
from vaeserve.server.repository import LoadedModel
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_METHOD = f"/{SERVICE}/ModelStreamInfer"
PLATFORM = "onnxruntime_onnx"
GRAPH_SUFFIXES = ("scorer", "encoder", "decoder")

# KServe datatype -> numpy dtype (little-endian) and the typed-contents field that holds it.
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "INT8": (np.dtype("i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "FP16": (np.dtype("<f2"), None),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}
INPUT_DATATYPES = ("FP32", "FP64", "FP16", "INT64", "INT32")
_NUMPY_TO_DATATYPE = {np.dtype("?"): "BOOL", np.dtype("<f4"): "FP32", np.dtype("<f8"): "FP64"}


def server_version() -> str:
    """The installed vaeserve version."""
    try:
        return metadata.version("vaeserve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def parse_version(text: str) -> int:
    """model_version "" -> 0 (newest), "3" -> 3; anything else is INVALID_ARGUMENT."""
    text = text.strip()
    if not text:
        return 0
    if not text.isdigit():
        raise RequestError.invalid(
            f'model_version {text!r} is not a version number; send e.g. "1", or "" for '
            "the newest version"
        )
    return int(text)


@dataclass
class TensorSpec:
    """One input or output: name, datatype and per-row shape (the batch axis is left out)."""

    name: str
    datatype: str
    row_shape: tuple[int, ...]

    def metadata(self) -> pb.ModelMetadataResponse.TensorMetadata:
        """As ModelMetadata lists it, with -1 for the batch axis."""
        return pb.ModelMetadataResponse.TensorMetadata(
            name=self.name, datatype=self.datatype, shape=[-1, *self.row_shape]
        )


@dataclass
class Target:
    """An inference model: one graph of one loaded model version."""

    name: str  # the KServe model name: NAME or NAME.encoder / NAME.decoder
    model: LoadedModel
    graph: str  # scorer, encoder or decoder

    @property
    def row_input(self) -> str:
        """The input that holds the rows: z for the decoder, x otherwise."""
        return "z" if self.graph == "decoder" else "x"

    def inputs(self) -> list[TensorSpec]:
        """The inputs this model takes."""
        m = self.model.manifest
        cols = m.latent_dim if self.graph == "decoder" else m.input_dim
        out = [TensorSpec(self.row_input, "FP32", (cols,))]
        if m.cond_dim:
            out.append(TensorSpec("cond", "FP32", (m.cond_dim,)))
        return out

    def outputs(self) -> list[TensorSpec]:
        """The outputs this model can return."""
        m = self.model.manifest
        if self.graph == "encoder":
            return [TensorSpec(n, "FP32", (m.latent_dim,)) for n in ("mu", "logvar")]
        if self.graph == "decoder":
            return [TensorSpec("x_hat", "FP32", (m.input_dim,))]
        out = [
            TensorSpec("kl", "FP32", ()),
            TensorSpec("kl_per_dim", "FP32", (m.latent_dim,)),
            TensorSpec("recon_nll", "FP32", ()),
            TensorSpec("neg_elbo", "FP32", ()),
            TensorSpec("p_value", "FP64", ()),
            TensorSpec("is_anomaly", "BOOL", ()),
        ]
        if "iw_scorer" in self.model.batchers:
            out.append(TensorSpec("iw_nll", "FP32", ()))
        return out


def _param(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _int_param(params: Any, name: str, default: int = 0) -> int:
    if name not in params:
        return default
    value = _param(params[name])
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError.invalid(f"parameter {name!r} must be an integer (int64_param)")
    return int(value)


def declared_rows(req: pb.ModelInferRequest) -> int:
    """Rows a request says it carries: the first dimension of its x or z input (else 0)."""
    for t in req.inputs:
        if t.name in ("x", "z") and len(t.shape):
            return max(0, int(t.shape[0]))
    return 0


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the models of a ModelOps."""

    def __init__(
        self,
        ops: ModelOps,
        settings: ServerSettings,
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ops = ops
        self.settings = settings
        self.is_ready = is_ready

    def _check_ready(self) -> None:
        if not self.is_ready():
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the server is starting or stopping (models not ready); retry shortly",
            )

    # ---- naming --------------------------------------------------------------------------
    def target(self, name: str, version: str) -> Target:
        """Resolve NAME / NAME.encoder / NAME.decoder (NAME.scorer too) and a version string."""
        v = parse_version(version)
        models = self.ops.repo.snapshot()
        base, graph = name, "scorer"
        if name not in models and "." in name:
            head, _, tail = name.rpartition(".")
            if tail in GRAPH_SUFFIXES and head in models:
                base, graph = head, tail
        if name and base not in models:
            loaded = ", ".join(f"{n}, {n}.encoder, {n}.decoder" for n in sorted(models)) or "none"
            raise RequestError.not_found(f"model {name!r} is not loaded; models: {loaded}")
        model = self.ops.model(base, v)
        if graph != "scorer":
            model.batcher(graph)  # FAILED_PRECONDITION when the export lacks it
        full = model.name if graph == "scorer" and name != f"{model.name}.scorer" else name
        return Target(full or model.name, model, graph)

    # ---- health and metadata -------------------------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """True while the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """True once every model found at start is warm, until shutdown begins."""
        return pb.ServerReadyResponse(ready=self.is_ready())

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
        return pb.ModelReadyResponse(ready=self.is_ready())

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
        versions = sorted(self.ops.repo.snapshot().get(t.model.name, {}))
        return pb.ModelMetadataResponse(
            name=t.name,
            versions=[str(v) for v in versions],
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
        note_call(rows=declared_rows(request))
        return await self._infer(request)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in order; a failed request gets error_message and the
        stream goes on. Up to stream_pipeline_depth requests run at once."""
        try:
            self._check_ready()
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        stream: RequestStream[pb.ModelInferRequest, pb.ModelStreamInferResponse] = RequestStream(
            start=self._stream_answer,
            rows=declared_rows,
            reject=self._stream_error,
            depth=self.settings.stream_pipeline_depth,
            max_inflight_rows=self.settings.max_stream_inflight_rows,
            metrics=self.ops.metrics,
        )
        async for resp in stream.run(request_iterator):
            yield resp

    async def _stream_answer(
        self, req: pb.ModelInferRequest
    ) -> Answer[pb.ModelStreamInferResponse]:
        target: Target | None = None
        try:
            self._check_ready()
            target = self.target(req.model_name, req.model_version)
            resp = await self._infer(req, target)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("stream request %r failed", req.id)
                exc = RequestError(grpc.StatusCode.INTERNAL, f"inference failed: {exc}")
            answer = self._stream_error(req, exc)
            answer.model = target.name if target is not None else ""
            return answer
        return Answer(
            pb.ModelStreamInferResponse(infer_response=resp),
            model=resp.model_name,
            rows=declared_rows(req),
        )

    def _stream_error(
        self, req: pb.ModelInferRequest, exc: RequestError
    ) -> Answer[pb.ModelStreamInferResponse]:
        self.ops.metrics.rejected(exc)
        return Answer(
            pb.ModelStreamInferResponse(
                error_message=f"{exc.code.name}: {exc.message}",
                infer_response=pb.ModelInferResponse(
                    model_name=req.model_name, model_version=req.model_version, id=req.id
                ),
            ),
            code=exc.code,
            rows=declared_rows(req),
        )

    async def _infer(
        self, req: pb.ModelInferRequest, target: Target | None = None
    ) -> pb.ModelInferResponse:
        t = target or self.target(req.model_name, req.model_version)
        note_call(model=t.name)
        model = t.model
        arrays = self._read_inputs(req, t)
        rows = arrays[t.row_input]
        n = rows.shape[0]
        cond = resolve_condition(model, n, "cond" in arrays, lambda: arrays["cond"])
        params = req.parameters
        resp_params: dict[str, pb.InferParameter] = {}
        if t.graph == "scorer":
            score = None
            if "score" in params:
                score = _param(params["score"])
                if not isinstance(score, str):
                    raise RequestError.invalid("parameter 'score' must be a string_param")
            threshold = None
            if "threshold" in params:
                threshold = _param(params["threshold"])
                if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                    raise RequestError.invalid("parameter 'threshold' must be a number (nats)")
                threshold = float(threshold)
            iw = _int_param(params, "iw_samples")
            seed = _int_param(params, "seed")
            if seed < 0:
                raise RequestError.invalid("parameter 'seed' must be >= 0")
            r = await self.ops.score(model, rows, cond, score, threshold, iw, seed)
            results: dict[str, np.ndarray] = {
                "kl": r.kl,
                "kl_per_dim": r.kl_per_dim,
                "recon_nll": r.recon_nll,
                "neg_elbo": r.neg_elbo,
                "p_value": r.p_value,
                "is_anomaly": r.is_anomaly,
            }
            if r.iw_nll is not None:
                results["iw_nll"] = r.iw_nll
            resp_params["score"] = pb.InferParameter(string_param=r.score)
            resp_params["threshold"] = pb.InferParameter(double_param=r.threshold)
        elif t.graph == "encoder":
            results = await self.ops.encode(model, rows, cond)
        else:
            results = await self.ops.decode(model, rows, cond)
        names = self._requested(req, t, results)
        raw = bool(req.raw_input_contents)
        if "binary_data_output" in params:
            value = _param(params["binary_data_output"])
            if not isinstance(value, bool):
                raise RequestError.invalid("parameter 'binary_data_output' must be a bool_param")
            raw = value
        resp = pb.ModelInferResponse(
            model_name=t.name, model_version=str(model.version), id=req.id, parameters=resp_params
        )
        for name in names:
            _add_output(resp, name, np.asarray(results[name]), raw)
        return resp

    def _requested(
        self, req: pb.ModelInferRequest, t: Target, results: dict[str, np.ndarray]
    ) -> list[str]:
        if not req.outputs:
            return [s.name for s in t.outputs() if s.name in results]
        names = []
        for o in req.outputs:
            if o.name not in results:
                known = [s.name for s in t.outputs()]
                if o.name == "iw_nll" and "iw_nll" in known:
                    raise RequestError.invalid(
                        "output 'iw_nll' needs the request parameter iw_samples > 0"
                    )
                raise RequestError.invalid(
                    f"model {t.name!r} has no output {o.name!r}; its outputs: {', '.join(known)}"
                )
            if o.name not in names:
                names.append(o.name)
        return names

    def _read_inputs(self, req: pb.ModelInferRequest, t: Target) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in t.inputs()}
        raw = list(req.raw_input_contents)
        if raw and len(raw) != len(req.inputs):
            raise RequestError.invalid(
                f"raw_input_contents has {len(raw)} entries but there are {len(req.inputs)} "
                "inputs; send one per input, in order"
            )
        seen: set[str] = set()
        out: dict[str, np.ndarray] = {}
        owner = label(t.model)
        for i, tensor in enumerate(req.inputs):
            if tensor.name in seen:
                raise RequestError.invalid(f"input {tensor.name!r} is given twice")
            seen.add(tensor.name)
            spec = specs.get(tensor.name)
            if spec is None:
                raise RequestError.invalid(
                    f"model {t.name!r} has no input {tensor.name!r}; its inputs: {', '.join(specs)}"
                )
            if raw and tensor.HasField("contents"):
                raise RequestError.invalid(
                    f"input {tensor.name!r} has typed contents but the request uses "
                    "raw_input_contents; use one or the other for all inputs"
                )
            if tensor.datatype not in INPUT_DATATYPES:
                raise RequestError.invalid(
                    f"input {tensor.name!r}: datatype {tensor.datatype!r} is not accepted; send "
                    "FP32 (FP64, FP16, INT64 and INT32 are converted to float32)"
                )
            what = f"input {tensor.name!r}"
            col_word = (
                "latent dimensions"
                if spec.name == "z"
                else ("columns" if spec.name == "cond" else "features")
            )
            check_shape(
                list(tensor.shape),
                what,
                spec.row_shape[0],
                col_word,
                owner,
                self.settings.max_request_rows,
            )
            a = _decode(tensor, raw[i] if raw else None, what)
            out[tensor.name] = finite_float32(a, what)
        if t.row_input not in out:
            need = specs[t.row_input]
            raise RequestError.invalid(
                f"input {t.row_input!r} is missing: send {need.datatype} [n, "
                f"{need.row_shape[0]}] for {owner}"
            )
        return out


def _decode(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, what: str
) -> np.ndarray:
    """An input's elements as an array of its shape, from raw bytes or typed contents."""
    dtype, field = DATATYPES[tensor.datatype]
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise RequestError.invalid(
                f"{what}: {len(raw)} bytes do not match shape {list(shape)} of "
                f"{tensor.datatype} ({count * dtype.itemsize} bytes expected)"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if field is None:
        raise RequestError.invalid(
            f"{what}: {tensor.datatype} has no typed contents; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise RequestError.invalid(
            f"{what}: contents.{field} holds {len(values)} values but shape {list(shape)} "
            f"needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def _add_output(resp: pb.ModelInferResponse, name: str, array: np.ndarray, raw: bool) -> None:
    """Append one output as raw bytes or typed contents."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    datatype = _NUMPY_TO_DATATYPE.get(array.dtype)
    if datatype is None:
        array = array.astype(np.float32)
        datatype = "FP32"
    out = resp.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
    if raw:
        resp.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    else:
        field = DATATYPES[datatype][1]
        assert field is not None
        getattr(out.contents, field).extend(array.ravel().tolist())
