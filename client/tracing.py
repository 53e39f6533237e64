"""OpenTelemetry for the client's calls: each call sends the caller's trace context in its
metadata (W3C `traceparent`, or what OTEL_PROPAGATORS names), so the server's spans join the
caller's trace, and gets a CLIENT span when an OpenTelemetry SDK is set up (by the
application, or by `vae-client` from the OTEL_* variables).

Without the OpenTelemetry API installed the channel is used as it is. A call made while the
process has not imported OpenTelemetry passes straight through: it can have no trace context.
"""

from __future__ import annotations

import collections
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import grpc

from vaeserve.common.tracing_setup import install_global, provider_from_environment

INSTRUMENTATION = "vaeserve.client"
SERVICE_NAME = "vae-client"  # of the vae-client command; OTEL_SERVICE_NAME overrides it

_installed: list[Any] = []  # [provider] set with use_tracer_provider


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with trace propagation on every call (as it is without the OpenTelemetry API)."""
    try:
        if importlib.util.find_spec("opentelemetry.context") is None:
            return channel
    except (ImportError, ValueError):
        return channel
    return grpc.intercept_channel(channel, ClientTracing())


def use_tracer_provider(provider: Any | None) -> None:
    """Make the client's spans in `provider` instead of the global TracerProvider (None: the
    global one again), as OpenTelemetry instrumentations take a `tracer_provider`."""
    _installed[:] = [provider] if provider is not None else []


def configure_from_environment() -> bool:
    """Set up tracing for the `vae-client` command from the OTEL_* variables (a global SDK
    TracerProvider, service name vae-client); False when they do not ask for it or the
    `tracing` extra is missing (said in one log line)."""
    provider = provider_from_environment(SERVICE_NAME)
    if provider is None:
        return False
    install_global(provider)
    return True


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A call's details with the trace context added to its metadata."""


class ClientTracing(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the current trace context to each call's metadata, in a CLIENT span when an SDK
    is set up (ended, with the call's status, when the call completes)."""

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        """A unary call."""
        return self._call(continuation, details, request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        """A server-streaming call."""
        return self._call(continuation, details, request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        """A client-streaming call."""
        return self._call(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        """A bidirectional stream (Score)."""
        return self._call(continuation, details, requests)

    def _call(self, continuation: Callable, details: Any, request: Any) -> Any:
        if "opentelemetry.context" not in sys.modules:  # no OpenTelemetry in use: no context
            return continuation(details, request)
        from opentelemetry import propagate, trace

        provider = _installed[0] if _installed else trace.get_tracer_provider()
        span = None
        context = None
        if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            method = details.method
            method = method.decode() if isinstance(method, bytes) else method
            service, _, rpc = method.lstrip("/").partition("/")
            span = provider.get_tracer(INSTRUMENTATION).start_span(
                f"{service}/{rpc}",
                kind=trace.SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
            )
            context = trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        if carrier:
            details = _with_metadata(details, carrier)
        if span is None:
            return continuation(details, request)
        try:
            call = continuation(details, request)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        call.add_done_callback(lambda done: _end_span(span, done))
        return call


def _with_metadata(details: Any, extra: dict[str, str]) -> _Details:
    metadata = [*(getattr(details, "metadata", None) or ()), *extra.items()]
    return _Details(
        details.method,
        getattr(details, "timeout", None),
        metadata,
        getattr(details, "credentials", None),
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _end_span(span: Any, call: Any) -> None:
    """End a call's span with its gRPC status (an error for any code but OK)."""
    from opentelemetry.trace import Status, StatusCode

    try:
        code = call.code()
    except Exception:  # a call that failed before it had a status
        code = grpc.StatusCode.UNKNOWN
    code = code or grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
