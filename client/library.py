"""VaeClient: numpy in, numpy out over one gRPC channel to a vae.v1 server.

A thin facade: `channel` opens the channel and retries unary calls (they have no side effects,
so UNAVAILABLE is retried with backoff), `arrays` checks inputs and splits them to fit the
request limits, and `score_stream` drives the Score stream (a bounded window of batches in
flight, resent after a reconnect, so every batch is answered exactly once and in input order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaeserve.client.arrays import (
    RequestLimits,
    as_rows,
    broadcast_condition,
    read_tensor,
    spans,
)
from vaeserve.client.channel import RetryPolicy, call_metadata, open_channel
from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo, ModelLike, ModelSummary, parse_model
from vaeserve.client.options import ConnectionOptions
from vaeserve.client.results import DriftReport, EncodeResult, SampleResult, ScoreResult
from vaeserve.client.score_stream import ScoreStream, score_request_template
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

T = TypeVar("T")


class VaeClient:
    """A context manager over one gRPC channel to a vae.v1 server."""

    def __init__(self, target: str, **options: Any) -> None:
        """Open a channel (lazily connected) to target; `options` are ConnectionOptions' other
        fields (tls, tls_ca, token, timeout, retries, ...). TLS is on when `tls` or any
        certificate is given."""
        self.options = ConnectionOptions(target=target, **options)
        self.target = target
        self.timeout = self.options.timeout
        self._channel = open_channel(self.options)
        self._metadata = call_metadata(self.options.token)
        self._retry = RetryPolicy(
            self.options.retries, self.options.backoff, self.options.max_backoff
        )
        self._limits = RequestLimits(
            self.options.request_bytes,
            self.options.max_request_rows,
            self.options.max_message_bytes,
        )
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info_cache: dict[tuple[str, int], ModelInfo] = {}

    @classmethod
    def from_options(cls, options: ConnectionOptions) -> VaeClient:
        """A client for the target and settings of a ConnectionOptions."""
        return cls(**vars(options))

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

    def _unary(self, method: Callable[..., T], request: Any, what: str, timeout: float | None) -> T:
        """A unary call under the retry policy, with the client's deadline unless given."""
        return self._retry.call(
            method,
            request,
            what=what,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )

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
        x = as_rows(rows, "rows")
        cond = broadcast_condition(condition, len(x))
        ref = parse_model(model)
        mus, logvars, zs, answered = [], [], [], ("", 0)
        for i, (s, e) in enumerate(spans(len(x), self._limits.rows_per_request(x.shape[1]))):
            request = vae_pb2.EncodeRequest(
                model=ref, rows=to_tensor(x[s:e]), sample=sample, seed=seed + i
            )
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(self._stub.Encode, request, "Encode", timeout)
            mus.append(read_tensor(reply.mu, "mu"))
            logvars.append(read_tensor(reply.logvar, "logvar"))
            if sample:
                zs.append(read_tensor(reply.z, "z"))
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
        return self._rows_to_rows("Decode", as_rows(z, "z"), model, condition, timeout)

    def reconstruct(
        self,
        rows: Any,
        *,
        model: ModelLike = None,
        condition: Any = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """decoder(posterior mean) of each row: what the model makes of it."""
        return self._rows_to_rows("Reconstruct", as_rows(rows, "rows"), model, condition, timeout)

    def _rows_to_rows(
        self, rpc: str, x: np.ndarray, model: ModelLike, condition: Any, timeout: float | None
    ) -> np.ndarray:
        """Decode / Reconstruct: rows in, rows out, split so both requests and answers fit."""
        request_type, field = {
            "Decode": (vae_pb2.DecodeRequest, "z"),
            "Reconstruct": (vae_pb2.ReconstructRequest, "rows"),
        }[rpc]
        cond = broadcast_condition(condition, len(x))
        ref = parse_model(model)
        info = self.model_info(model, cached=True)
        step = min(
            self._limits.rows_per_request(x.shape[1]),
            self._limits.rows_per_answer(4 * max(1, info.input_dim)),
        )
        out = []
        for s, e in spans(len(x), step):
            request = request_type(model=ref, **{field: to_tensor(x[s:e])})
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(getattr(self._stub, rpc), request, rpc, timeout)
            out.append(read_tensor(reply.rows, "rows"))
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
        answer_row_bytes = 4 * (info.input_dim + info.latent_dim) + 16
        step = min(self._limits.max_request_rows, self._limits.rows_per_answer(answer_row_bytes))
        cond = broadcast_condition(condition, n) if n else None
        if n == 0:
            yield SampleResult(
                rows=np.zeros((0, info.input_dim), np.float32),
                z=np.zeros((0, info.latent_dim), np.float32),
                model=(info.name, info.version),
            )
            return
        for k, (s, e) in enumerate(spans(n, step)):
            request = vae_pb2.SampleRequest(model=ref, n=e - s, seed=seed + k)
            if cond is not None:
                request.condition.CopyFrom(to_tensor(cond[s:e]))
            reply = self._unary(self._stub.Sample, request, "Sample", timeout)
            yield SampleResult(
                rows=read_tensor(reply.rows, "rows"),
                z=read_tensor(reply.z, "z"),
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
        request = vae_pb2.ModelInfoRequest(model=ref)
        info = ModelInfo.from_reply(
            self._unary(self._stub.ModelInfo, request, "ModelInfo", timeout)
        )
        self._info_cache[key] = info
        return info

    def list_models(self, *, timeout: float | None = None) -> list[ModelSummary]:
        """Every model the server has loaded."""
        reply = self._unary(
            self._stub.ListModels, vae_pb2.ListModelsRequest(), "ListModels", timeout
        )
        return [ModelSummary(m.name, list(m.versions), m.latest, m.ready) for m in reply.models]

    def drift(self, model: ModelLike = None, *, timeout: float | None = None) -> DriftReport:
        """The server's drift window of a model version: the drift of the last rows it scored
        against the model's validation rows (KL in nats, p-value). FAILED_PRECONDITION when
        the server keeps no window for it (drift_window_rows 0, or an older export)."""
        request = vae_pb2.ModelDriftRequest(model=parse_model(model))
        reply = self._unary(self._stub.ModelDrift, request, "ModelDrift", timeout)
        return DriftReport(
            model=(reply.model.name, reply.model.version),
            rows=reply.rows,
            kl=reply.kl,
            kl_per_dim=np.asarray(reply.kl_per_dim, np.float64),
            share_per_dim=np.asarray(reply.share_per_dim, np.float64),
            p_value=reply.p_value if reply.HasField("p_value") else None,
            window_rows=reply.window_rows,
            rows_seen=reply.rows_seen,
            evaluated_at=reply.evaluated_at,
            reference_rows=reply.reference_rows,
            null_method=reply.null_method,
        )

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name ('SERVING', 'NOT_SERVING', ...) of a service."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._unary(self._health.Check, request, "Health", timeout)
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
        explain: int = 0,
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
        `explain` = K > 0 adds each row's top K features (`ScoreResult.explain`, with the
        model's feature names; all features when K is larger than the model has).
        """
        template = score_request_template(
            score=score,
            threshold=threshold,
            include_kl_per_dim=include_kl_per_dim,
            iw_samples=iw_samples,
            seed=seed,
            explain=explain,
        )
        stream = ScoreStream(
            self._stub,
            self._retry,
            self._limits,
            model=parse_model(model),
            template=template,
            metadata=self._metadata,
            columns=columns,
            max_in_flight=max_in_flight,
            timeout=timeout,
            raise_errors=raise_errors,
        )
        for result in stream.results(batches):
            if result.explain is not None:
                info = self.model_info(result.model, cached=True)
                result.explain = result.explain.named(info.feature_names)
            yield result
