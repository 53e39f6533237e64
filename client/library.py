"""VaeClient: numpy in, numpy out over one gRPC channel to a vae.v1 server.

Unary calls (encode, decode, sample, reconstruct, model info, list, health) have no side
effects, so they are retried with exponential backoff on UNAVAILABLE. `score` keeps a bounded
window of batches in flight on one bidirectional Score stream; when the stream drops with
UNAVAILABLE it reconnects and resends only the unanswered batches, so every input batch is
answered exactly once and results come out in input order.
"""

from __future__ import annotations

import collections
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaeserve.client.errors import VaeClientError
from vaeserve.common.scores import DEFAULT_SCORE, SCORE_KINDS
from vaeserve.common.scores import KIND_NAMES as _KIND_NAMES
from vaeserve.common.tensors import TensorError, from_tensor, is_set, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

#: Statuses worth another attempt: the server or the network is away for a moment.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
#: Requests are split to stay under gRPC's default 4 MiB receive limit on the server.
DEFAULT_REQUEST_BYTES = (4 << 20) - (64 << 10)
#: ... and under the server's default cap on rows per request (max_request_rows).
DEFAULT_REQUEST_ROWS = 4096

#: Name of the thread that pulls input batches for `score` (it may block on a slow source).
FEEDER_THREAD = "vae-score-feeder"

T = TypeVar("T")
ModelLike = str | tuple[str, int] | None


def parse_model(model: ModelLike) -> vae_pb2.ModelRef:
    """'name', 'name:version', (name, version) or None (the server's default) to a ModelRef."""
    if model is None:
        return vae_pb2.ModelRef()
    if isinstance(model, tuple):
        name, version = model
        return vae_pb2.ModelRef(name=name, version=int(version or 0))
    name, sep, version = str(model).partition(":")
    if sep and not version.isdigit():
        raise VaeClientError(f"model {model!r}: the version after ':' must be an integer")
    if not name:
        raise VaeClientError(f"model {model!r}: the name is empty")
    return vae_pb2.ModelRef(name=name, version=int(version) if sep else 0)


def format_model(ref: vae_pb2.ModelRef | tuple[str, int]) -> str:
    """'name:version' (or 'name' when the version is 0) for messages."""
    name, version = (ref.name, ref.version) if isinstance(ref, vae_pb2.ModelRef) else ref
    return f"{name}:{version}" if version else name


@dataclass
class Batch:
    """One batch for `VaeClient.score`: rows [n, D], row ids (or the first id) and condition.

    Without row_ids the ids are `start` + 0..n-1, and without `start` they continue from the
    previous batch (0 for the first).
    """

    rows: np.ndarray
    row_ids: np.ndarray | None = None
    condition: np.ndarray | None = None
    start: int | None = None


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
class ModelInfo:
    """What the server says about one loaded model version."""

    name: str
    version: int
    versions: list[int]
    providers: list[str]
    device: str
    input_dim: int
    latent_dim: int
    cond_dim: int
    feature_names: list[str]
    condition_classes: list[str]
    likelihood: str
    default_score: str
    thresholds: dict[str, float]
    ready: bool
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, without the manifest (it is large)."""
        d = dict(self.__dict__)
        d.pop("manifest")
        return d


@dataclass
class ModelSummary:
    """One entry of ListModels."""

    name: str
    versions: list[int]
    latest: int
    ready: bool


@dataclass
class _Pending:
    index: int
    chunks: int
    rows: int
    parts: list[vae_pb2.ScoreResponse] = field(default_factory=list)


class _Window:
    """Score requests sent but not yet answered: bounded, and replayable on a new stream."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = max(1, limit)
        self._requests_by_seq: dict[int, vae_pb2.ScoreRequest] = {}
        self._next = 0
        self._done = 0
        self._closed = False
        self._aborted = False
        self._generation = 0

    def put(self, request: vae_pb2.ScoreRequest) -> bool:
        """Add a request, blocking while the window is full; False once aborted."""
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or self._next - self._done < self._limit)
            if self._aborted:
                return False
            self._requests_by_seq[self._next] = request
            self._next += 1
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """No more requests will be added."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Wake and stop every waiter (the producer and any request iterator)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def answered(self) -> None:
        """The oldest unanswered request got its response."""
        with self._cond:
            if self._done >= self._next:
                raise VaeClientError("the server answered more Score requests than were sent")
            del self._requests_by_seq[self._done]
            self._done += 1
            self._cond.notify_all()

    @property
    def unanswered(self) -> int:
        """Requests sent (or queued) but not answered."""
        with self._cond:
            return self._next - self._done

    @property
    def finished(self) -> bool:
        """Closed and every request answered."""
        with self._cond:
            return self._closed and self._done == self._next

    def stream(self, model: vae_pb2.ModelRef) -> Iterator[vae_pb2.ScoreRequest]:
        """A request iterator for a new stream: unanswered requests first, then new ones."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()  # an older stream's iterator sees it is stale and ends
            return self._requests(self._generation, self._done, model)

    def _requests(
        self, generation: int, seq: int, model: vae_pb2.ModelRef
    ) -> Iterator[vae_pb2.ScoreRequest]:
        first = True
        while True:
            with self._cond:
                while not (
                    self._aborted
                    or self._generation != generation
                    or seq < self._next
                    or self._closed
                ):
                    self._cond.wait()
                if self._aborted or self._generation != generation or seq >= self._next:
                    return
                request = self._requests_by_seq[seq]
            seq += 1
            if first:  # the model may only be named on a stream's first message
                first = False
                request = _with_model(request, model)
            yield request


def _with_model(request: vae_pb2.ScoreRequest, model: vae_pb2.ModelRef) -> vae_pb2.ScoreRequest:
    copy = vae_pb2.ScoreRequest()
    copy.CopyFrom(request)
    copy.model.CopyFrom(model)
    return copy


def _read(path_or_bytes: str | Path | bytes | None) -> bytes | None:
    if path_or_bytes is None or isinstance(path_or_bytes, bytes):
        return path_or_bytes
    try:
        return Path(path_or_bytes).read_bytes()
    except OSError as exc:
        raise VaeClientError(f"cannot read {path_or_bytes}: {exc.strerror}") from exc


def _as_rows(array: Any, what: str, width: int | None = None) -> np.ndarray:
    rows = np.asarray(array)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise VaeClientError(f"{what} must be 2-D [n, features], got shape {list(rows.shape)}")
    if not (np.issubdtype(rows.dtype, np.number) or rows.dtype == np.bool_):
        raise VaeClientError(f"{what} must be numeric, got dtype {rows.dtype}")
    if width is not None and rows.shape[1] != width:
        raise VaeClientError(f"{what} has {rows.shape[1]} columns, expected {width}")
    return np.ascontiguousarray(rows, dtype=np.float32)


def _ranges(n: int, step: int) -> list[tuple[int, int]]:
    step = max(1, step)
    return [(s, min(n, s + step)) for s in range(0, n, step)] or [(0, 0)]


class VaeClient:
    """A context manager over one gRPC channel to a vae.v1 server."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        tls_ca: str | Path | bytes | None = None,
        client_cert: str | Path | bytes | None = None,
        client_key: str | Path | bytes | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        max_message_mb: float = 64.0,
        request_bytes: int = DEFAULT_REQUEST_BYTES,
        max_request_rows: int = DEFAULT_REQUEST_ROWS,
        load_balancing: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel (lazily connected); TLS when `tls` or any certificate is given."""
        if (client_cert is None) != (client_key is None):
            raise VaeClientError("a client certificate needs its key and the key its certificate")
        self.target = target
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_bytes = max(1024, int(request_bytes))
        self.max_request_rows = max(1, int(max_request_rows))
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        max_bytes = int(max_message_mb * (1 << 20))
        self.max_message_bytes = max_bytes
        opts: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.primary_user_agent", "vaeserve-client"),
            # Come back quickly after a server restart instead of gRPC's default up-to-120 s.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if load_balancing:
            config = {"loadBalancingConfig": [{load_balancing: {}}]}
            opts.append(("grpc.service_config", json.dumps(config)))
        if tls_server_name:
            opts.append(("grpc.ssl_target_name_override", tls_server_name))
        opts.extend(options)
        if tls or tls_ca is not None or client_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca),
                private_key=_read(client_key),
                certificate_chain=_read(client_cert),
            )
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info_cache: dict[tuple[str, int], ModelInfo] = {}

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        """The underlying grpc.Channel (for stubs of other services on the same server)."""
        return self._channel

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected, or raise VaeClientError(UNAVAILABLE)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise VaeClientError(
                f"no server answered at {self.target} within {timeout:g} s",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from None

    def _sleep_before_retry(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        time.sleep(delay * random.uniform(0.5, 1.0))

    def _unary(self, method: Callable[..., T], request: Any, what: str, timeout: float | None) -> T:
        """Call with a deadline, retrying UNAVAILABLE with exponential backoff and jitter."""
        deadline = self.timeout if timeout is None else timeout
        attempt = 0
        while True:
            try:
                return method(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() in RETRYABLE and attempt < self.retries:
                    self._sleep_before_retry(attempt)
                    attempt += 1
                    continue
                raise VaeClientError.from_rpc_error(exc, what) from None

    def _rows_per_request(self, width: int) -> int:
        """Rows of `width` float32 values (4 bytes each) that fit one request."""
        return max(1, min(self.max_request_rows, self.request_bytes // max(1, 4 * width)))

    def _split(self, width: int, model: ModelLike) -> int:
        """Rows per request so that both the request and a [n, input_dim] answer fit."""
        info = self.model_info(model, cached=True)
        answer = int(self.max_message_bytes * 0.9) // (4 * max(1, info.input_dim))
        return max(1, min(self._rows_per_request(width), answer))

    @staticmethod
    def _condition(condition: Any, n: int) -> np.ndarray | None:
        if condition is None:
            return None
        cond = _as_rows(condition, "condition")
        if cond.shape[0] not in (1, n):
            raise VaeClientError(f"condition has {cond.shape[0]} rows, expected 1 or {n}")
        return np.broadcast_to(cond, (n, cond.shape[1])) if cond.shape[0] == 1 else cond

    @staticmethod
    def _array(tensor: vae_pb2.Tensor, what: str) -> np.ndarray:
        try:
            return from_tensor(tensor, what)
        except TensorError as exc:
            raise VaeClientError(f"malformed response: {exc}") from None

    # ------------------------------------------------------------------ unary calls
    def encode(
        self,
        rows: Any,
        *,
        model: ModelLike = None,
        condition: Any = None,
        sample: bool = False,
        seed: int = 0,
        timeout: float | None = None,
    ) -> EncodeResult:
        """Posterior mean and log-variance of each row (and z = mu + sigma*eps with `sample`)."""
        x = _as_rows(rows, "rows")
        cond = self._condition(condition, len(x))
        ref = parse_model(model)
        mus, logvars, zs, answered = [], [], [], ("", 0)
        for i, (s, e) in enumerate(_ranges(len(x), self._rows_per_request(x.shape[1]))):
            request = vae_pb2.EncodeRequest(
                model=ref, rows=to_tensor(x[s:e]), sample=sample, seed=seed + i
            )
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(self._stub.Encode, request, "Encode", timeout)
            mus.append(self._array(reply.mu, "mu"))
            logvars.append(self._array(reply.logvar, "logvar"))
            if sample:
                zs.append(self._array(reply.z, "z"))
            answered = (reply.model.name, reply.model.version)
        return EncodeResult(
            mu=np.concatenate(mus),
            logvar=np.concatenate(logvars),
            z=np.concatenate(zs) if sample else None,
            model=answered,
        )

    def decode(
        self,
        z: Any,
        *,
        model: ModelLike = None,
        condition: Any = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Decoder output of each latent row, in raw feature units."""
        return self._rows_to_rows("Decode", _as_rows(z, "z"), model, condition, timeout)

    def reconstruct(
        self,
        rows: Any,
        *,
        model: ModelLike = None,
        condition: Any = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """decoder(posterior mean) of each row: what the model makes of it."""
        return self._rows_to_rows("Reconstruct", _as_rows(rows, "rows"), model, condition, timeout)

    def _rows_to_rows(
        self, rpc: str, x: np.ndarray, model: ModelLike, condition: Any, timeout: float | None
    ) -> np.ndarray:
        """Decode / Reconstruct: rows in, rows out, split to fit the server's limits."""
        request_type, field = {
            "Decode": (vae_pb2.DecodeRequest, "z"),
            "Reconstruct": (vae_pb2.ReconstructRequest, "rows"),
        }[rpc]
        cond = self._condition(condition, len(x))
        ref = parse_model(model)
        out = []
        for s, e in _ranges(len(x), self._split(x.shape[1], model)):
            request = request_type(model=ref, **{field: to_tensor(x[s:e])})
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(getattr(self._stub, rpc), request, rpc, timeout)
            out.append(self._array(reply.rows, "rows"))
        return np.concatenate(out)

    def sample(
        self,
        n: int,
        *,
        model: ModelLike = None,
        seed: int = 0,
        condition: Any = None,
        timeout: float | None = None,
    ) -> SampleResult:
        """n rows generated from z ~ N(0, I); a split request uses seed + k for part k."""
        parts = list(
            self.iter_sample(n, model=model, seed=seed, condition=condition, timeout=timeout)
        )
        if len(parts) == 1:
            return parts[0]
        return SampleResult(
            rows=np.concatenate([p.rows for p in parts]),
            z=np.concatenate([p.z for p in parts]),
            model=parts[-1].model,
        )

    def iter_sample(
        self,
        n: int,
        *,
        model: ModelLike = None,
        seed: int = 0,
        condition: Any = None,
        timeout: float | None = None,
    ) -> Iterator[SampleResult]:
        """`sample` one request at a time (part k uses seed + k), so n can exceed memory;
        yields one empty part when n is 0."""
        if n < 0:
            raise VaeClientError(f"n must be >= 0, got {n}")
        info = self.model_info(model, cached=True)
        ref = parse_model(model)
        per_row = 4 * (info.input_dim + info.latent_dim) + 16
        step = max(1, min(self.max_request_rows, int(self.max_message_bytes * 0.9) // per_row))
        cond = self._condition(condition, n) if n else None
        if n == 0:
            yield SampleResult(
                rows=np.zeros((0, info.input_dim), np.float32),
                z=np.zeros((0, info.latent_dim), np.float32),
                model=(info.name, info.version),
            )
            return
        for k, (s, e) in enumerate(_ranges(n, step)):
            request = vae_pb2.SampleRequest(model=ref, n=e - s, seed=seed + k)
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(self._stub.Sample, request, "Sample", timeout)
            yield SampleResult(
                rows=self._array(reply.rows, "rows"),
                z=self._array(reply.z, "z"),
                model=(reply.model.name, reply.model.version),
            )

    def model_info(
        self, model: ModelLike = None, *, cached: bool = False, timeout: float | None = None
    ) -> ModelInfo:
        """Schema, versions, device and manifest of a model (`cached` reuses an earlier answer)."""
        ref = parse_model(model)
        key = (ref.name, ref.version)
        if cached and key in self._info_cache:
            return self._info_cache[key]
        reply = self._unary(
            self._stub.ModelInfo, vae_pb2.ModelInfoRequest(model=ref), "ModelInfo", timeout
        )
        schema = reply.schema
        try:
            manifest = json.loads(reply.manifest_json) if reply.manifest_json else {}
        except json.JSONDecodeError:
            manifest = {}
        info = ModelInfo(
            name=reply.model.name,
            version=reply.model.version,
            versions=list(reply.versions),
            providers=list(reply.providers),
            device=reply.device,
            input_dim=schema.input_dim,
            latent_dim=schema.latent_dim,
            cond_dim=schema.cond_dim,
            feature_names=list(schema.feature_names),
            condition_classes=list(schema.condition_classes),
            likelihood=schema.likelihood,
            default_score=_KIND_NAMES.get(schema.default_score, DEFAULT_SCORE),
            thresholds=dict(schema.thresholds),
            ready=reply.ready,
            manifest=manifest,
        )
        self._info_cache[key] = info
        return info

    def list_models(self, *, timeout: float | None = None) -> list[ModelSummary]:
        """Every model the server has loaded."""
        reply = self._unary(
            self._stub.ListModels, vae_pb2.ListModelsRequest(), "ListModels", timeout
        )
        return [ModelSummary(m.name, list(m.versions), m.latest, m.ready) for m in reply.models]

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name ('SERVING', 'NOT_SERVING', ...) of a service."""
        reply = self._unary(
            self._health.Check,
            health_pb2.HealthCheckRequest(service=service),
            "Health",
            timeout,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ------------------------------------------------------------------ streamed scores
    def score(
        self,
        batches: Iterable[Any],
        *,
        model: ModelLike = None,
        score: str | None = None,
        threshold: float | None = None,
        include_kl_per_dim: bool = False,
        iw_samples: int = 0,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        max_in_flight: int = 4,
        timeout: float | None = None,
        raise_errors: bool = True,
    ) -> Iterator[ScoreResult]:
        """Score an iterable of batches on one Score stream, yielding results in input order.

        Items are arrays [n, D], `Batch`es, (rows, row_ids) tuples, or pyarrow RecordBatches /
        Tables (`columns` picks the feature columns). At most `max_in_flight` requests are
        unanswered at any time, so memory stays bounded however long the iterable is. A batch
        the server rejects raises VaeClientError, or with `raise_errors=False` is yielded with
        `error` set. `timeout` is a deadline for the whole stream (none by default).
        """
        if score is not None and score not in SCORE_KINDS:
            raise VaeClientError(f"score must be one of {sorted(SCORE_KINDS)}, got {score!r}")
        ref = parse_model(model)
        window = _Window(max_in_flight)
        order: collections.deque[_Pending] = collections.deque()
        failures: list[BaseException] = []
        template = vae_pb2.ScoreRequest(
            include_kl_per_dim=include_kl_per_dim,
            score=SCORE_KINDS[score] if score else vae_pb2.SCORE_KIND_UNSPECIFIED,
            iw_samples=iw_samples,
            seed=seed,
        )
        if threshold is not None:
            template.threshold = threshold

        def feed() -> None:
            try:
                offset = 0
                for index, item in enumerate(batches):
                    batch = _coerce_batch(item, columns)
                    n = len(batch.rows)
                    if batch.start is not None:
                        offset = batch.start
                    per_row = batch.rows.shape[1] + (2 if batch.row_ids is not None else 0)
                    if batch.condition is not None:
                        per_row += batch.condition.shape[1]
                    spans = _ranges(n, self._rows_per_request(per_row)) if n else []
                    order.append(_Pending(index, len(spans), n))
                    for j, (s, e) in enumerate(spans):
                        request = vae_pb2.ScoreRequest()
                        request.CopyFrom(template)
                        request.batch_id = f"{index}" if len(spans) == 1 else f"{index}.{j}"
                        request.rows.CopyFrom(to_tensor(batch.rows[s:e]))
                        if batch.row_ids is not None:
                            request.row_ids.CopyFrom(to_tensor(batch.row_ids[s:e]))
                        else:
                            request.start_offset = offset + s
                        if batch.condition is not None:
                            request.condition.CopyFrom(to_tensor(batch.condition[s:e]))
                        if not window.put(request):
                            return
                    offset += n
            except BaseException as exc:  # re-raised in the consumer
                failures.append(exc)
            finally:
                window.close()

        feeder = threading.Thread(target=feed, name=FEEDER_THREAD, daemon=True)
        call = None
        try:
            feeder.start()
            attempt = 0
            while True:
                call = self._stub.Score(
                    window.stream(ref), timeout=timeout, metadata=self._metadata
                )
                try:
                    for reply in call:
                        attempt = 0
                        yield from self._ready_empty(order)
                        if not order:
                            raise VaeClientError("the server answered a Score request never sent")
                        head = order[0]
                        expected = (
                            f"{head.index}"
                            if head.chunks == 1
                            else f"{head.index}.{len(head.parts)}"
                        )
                        if reply.batch_id and reply.batch_id != expected:
                            raise VaeClientError(
                                f"Score answers are out of order: got batch {reply.batch_id!r} "
                                f"while waiting for {expected!r}",
                                code=grpc.StatusCode.INTERNAL,
                            )
                        window.answered()
                        head.parts.append(reply)
                        if len(head.parts) == head.chunks:
                            order.popleft()
                            result = _merge(head)
                            if result.error is not None and raise_errors:
                                raise result.error
                            yield result
                        yield from self._ready_empty(order)
                except grpc.RpcError as exc:
                    if exc.code() in RETRYABLE and attempt < self.retries and not failures:
                        self._sleep_before_retry(attempt)
                        attempt += 1
                        continue
                    raise VaeClientError.from_rpc_error(exc, "Score") from None
                break
            if failures:
                raise failures[0]
            if not window.finished:
                raise VaeClientError(
                    f"the server closed the Score stream with {window.unanswered} "
                    "batches unanswered",
                    code=grpc.StatusCode.UNAVAILABLE,
                )
            yield from self._ready_empty(order, final=True)
        finally:
            window.abort()
            if call is not None:
                call.cancel()
            feeder.join(timeout=1.0)

    @staticmethod
    def _ready_empty(
        order: collections.deque[_Pending], final: bool = False
    ) -> Iterator[ScoreResult]:
        """Results of empty batches at the head of the queue (they are never sent)."""
        while order and order[0].chunks == 0:
            yield _merge(order.popleft())
        if final and order:
            raise VaeClientError(f"{len(order)} batches were never answered")


def _coerce_batch(item: Any, columns: Sequence[str] | None) -> Batch:
    """An array, (rows, ids[, condition]) tuple, Batch or Arrow batch/table to a Batch."""
    if isinstance(item, Batch):
        batch = item
    elif isinstance(item, tuple):
        batch = Batch(*item)
    elif type(item).__module__.startswith("pyarrow"):
        batch = Batch(_arrow_rows(item, columns))
    else:
        batch = Batch(item)
    rows = _as_rows(batch.rows, "rows")
    ids = None
    if batch.row_ids is not None:
        ids = np.ascontiguousarray(batch.row_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(rows):
            raise VaeClientError(f"row_ids has {len(ids)} entries for {len(rows)} rows")
    cond = None
    if batch.condition is not None:
        cond = VaeClient._condition(batch.condition, len(rows))
    return Batch(rows, ids, cond, batch.start)


def _arrow_rows(item: Any, columns: Sequence[str] | None) -> np.ndarray:
    names = list(columns) if columns else list(item.schema.names)
    missing = [c for c in names if c not in item.schema.names]
    if missing:
        raise VaeClientError(f"columns {missing} are not in the record batch")
    cols = [np.asarray(item.column(c).to_numpy(zero_copy_only=False)) for c in names]
    if not cols:
        return np.zeros((item.num_rows, 0), np.float32)
    return np.column_stack([c.astype(np.float32, copy=False) for c in cols])


def _merge(pending: _Pending) -> ScoreResult:
    """One ScoreResult from the responses to the parts of one input batch."""
    empty32 = np.zeros(0, np.float32)
    if not pending.parts:
        return ScoreResult(
            index=pending.index,
            row_ids=np.zeros(0, np.int64),
            kl=empty32,
            recon_nll=empty32,
            neg_elbo=empty32,
            p_value=np.zeros(0, np.float64),
            is_anomaly=np.zeros(0, bool),
            rows=0,
        )
    errors = [p for p in pending.parts if p.HasField("error") and p.error.code != 0]
    first = pending.parts[0]
    model = (first.model.name, first.model.version)
    if errors:
        err = errors[0].error
        return ScoreResult(
            index=pending.index,
            row_ids=np.zeros(0, np.int64),
            kl=empty32,
            recon_nll=empty32,
            neg_elbo=empty32,
            p_value=np.zeros(0, np.float64),
            is_anomaly=np.zeros(0, bool),
            model=model,
            error=VaeClientError.from_status(
                err.code, err.message, f"batch {pending.index} rejected"
            ),
            rows=pending.rows,
        )

    def cat(name: str, optional: bool = False) -> np.ndarray | None:
        tensors = [getattr(p, name) for p in pending.parts]
        if optional and not all(is_set(t) for t in tensors):
            return None
        return np.concatenate([VaeClient._array(t, name) for t in tensors])

    result = ScoreResult(
        index=pending.index,
        row_ids=cat("row_ids"),
        kl=cat("kl"),
        recon_nll=cat("recon_nll"),
        neg_elbo=cat("neg_elbo"),
        p_value=cat("p_value"),
        is_anomaly=cat("is_anomaly"),
        kl_per_dim=cat("kl_per_dim", optional=True),
        iw_nll=cat("iw_nll", optional=True),
        score=_KIND_NAMES.get(first.score, ""),
        threshold=first.threshold,
        model=model,
        rows=pending.rows,
    )
    if len(result.kl) != pending.rows:
        result.error = VaeClientError(
            f"batch {pending.index}: the server returned {len(result.kl)} scores "
            f"for {pending.rows} rows",
            code=grpc.StatusCode.INTERNAL,
        )
    return result
