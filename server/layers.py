"""The built-in call layers (see server/interception.py), outermost first: observe the call
(request id, metrics, access log), trace it (when OpenTelemetry tracing is configured,
server/spans.py), check its bearer token, and cap the streams open at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from vaeserve.server import tracing
from vaeserve.server.call_context import REQUEST_ID_HEADER, CallInfo, begin_call, request_id_from
from vaeserve.server.interception import Layer
from vaeserve.server.metrics import Metrics, code_name
from vaeserve.server.security import TokenStore, bearer_token
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("vaeserve.access")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def builtin_layers(
    settings: ServerSettings, metrics: Metrics, stream_limit: StreamLimitLayer
) -> list[Layer]:
    """The layers every call runs in, outermost first (raises SecurityError on bad tokens)."""
    layers: list[Layer] = [ObservabilityLayer(metrics, settings.access_log)]
    tracing_layer = tracing.tracing_layer()  # None unless OTEL_* configure tracing
    if tracing_layer is not None:
        layers.append(tracing_layer)
    if settings.token_auth:
        layers.append(AuthLayer(TokenStore(settings), metrics, open_health=settings.open_health))
    layers.append(stream_limit)
    return layers


def method_name(full_method: str) -> str:
    """'/vae.v1.VaeService/Score' -> 'Score'."""
    return full_method.rsplit("/", 1)[-1]


class ObservabilityLayer:
    """Request ids, call metrics and the access log.

    Request-streaming calls are counted as streams; their messages are counted by the
    servicers (Metrics.observe_stream_message), each with its own status code.
    """

    def __init__(self, metrics: Metrics, access: bool = True) -> None:
        self.metrics = metrics
        self.access = access

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[CallInfo]:
        """Run one call: set its request id, echo it, then count and log the outcome."""
        rid = request_id_from(context.invocation_metadata())
        info = begin_call(rid, method_name(method), streaming)
        # read the peer now: after a call is cancelled grpc may have freed it (a crash, seen
        # with grpcio 1.85 when a client cancels a stream)
        peer = context.peer() if self.access else ""
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        if streaming:
            self.metrics.streams_open.labels(info.rpc).inc()
        code: grpc.StatusCode | None = None
        try:
            yield info
            code = ended_code(context)
        except BaseException as exc:
            code = call_code(exc, context)
            raise
        finally:
            seconds = time.perf_counter() - info.started
            if streaming:
                self.metrics.streams_open.labels(info.rpc).dec()
                self.metrics.streams.labels(info.rpc, code_name(code)).inc()
            else:
                self.metrics.observe_request(info.rpc, info.model, code, info.rows, seconds)
            if self.access:
                _log_access(info, method, code, seconds, streaming, peer)


def _log_access(
    info: CallInfo,
    method: str,
    code: grpc.StatusCode | None,
    seconds: float,
    streaming: bool,
    peer: str,
) -> None:
    fields: dict[str, Any] = {
        "rpc": info.rpc,
        "method": method,
        "code": code_name(code),
        "model": info.model,
        "rows": info.rows,
        "duration_ms": round(seconds * 1000.0, 3),
        "peer": peer,
    }
    if streaming:
        fields["messages"] = info.messages
        fields["message_errors"] = info.errors
    text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "method")
    access_log.info("%s %s", "stream" if streaming else "call", text, extra={"fields": fields})


def ended_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    """The status a call ends with when its servicer returned: CANCELLED when the peer went
    away meanwhile (a cancelled stream's reads can end as if the client had closed them)."""
    code = context.code()
    if code is None and context.cancelled():
        return grpc.StatusCode.CANCELLED
    return code


def call_code(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call ends with when its servicer raised `exc`."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the peer went away
        return grpc.StatusCode.CANCELLED
    return context.code() or grpc.StatusCode.UNKNOWN


class AuthLayer:
    """Requires an accepted bearer token (health checks stay open with `open_health`).

    A call without one is aborted UNAUTHENTICATED and logged with its peer and the reason,
    never with what it sent.
    """

    def __init__(self, store: TokenStore, metrics: Metrics, open_health: bool = True) -> None:
        self.store = store
        self.metrics = metrics
        self.open_health = open_health

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Pass the call through, or abort it UNAUTHENTICATED."""
        if not (self.open_health and method.startswith(HEALTH_PREFIX)):
            token, reason = bearer_token(context.invocation_metadata())
            if token is not None and not self.store.accepts(token):
                reason = "invalid"
            if reason:
                self.metrics.auth_failures.labels(reason).inc()
                log.warning(
                    "unauthenticated call to %s from %s: %s bearer token",
                    method,
                    _who(context),
                    {"missing": "no", "malformed": "malformed", "invalid": "unknown"}[reason],
                    extra={"fields": {"auth_failure": reason, "method": method}},
                )
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs a bearer token: send metadata "
                    "'authorization: Bearer <token>' with a token it accepts",
                )
        yield


def _who(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer()
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:  # pragma: no cover - auth_context is best effort
        names = []
    if names:
        peer += f" (client certificate CN={names[0].decode(errors='replace')})"
    return peer


class StreamLimitLayer:
    """Refuses a new stream while `max_streams` are open (0: no limit)."""

    def __init__(self, max_streams: int, methods: Iterable[str], metrics: Metrics) -> None:
        self.max_streams = max_streams
        self.methods = set(methods)
        self.metrics = metrics
        self.open = 0

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Count the stream while it is open, or abort it RESOURCE_EXHAUSTED."""
        if method not in self.methods:
            yield
            return
        if self.max_streams and self.open >= self.max_streams:
            self.metrics.limit_rejections.labels("max_streams").inc()
            log.warning("refused a %s stream: %d streams open (max_streams)", method, self.open)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many streams: {self.open} are open and this server allows "
                f"{self.max_streams} at once (setting max_streams); close one or retry later",
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
