"""Tracing hooks on the server's hot path, and the tracer a starting server uses.

The span of the call or stream message being served sits in a context variable as a
SpanRecord (server/spans.py). Every hook starts by reading that variable, so with tracing off
(no OTEL_* configuration, or no `tracing` extra) a hook costs one context-variable read and no
span object is ever made; only server/spans.py imports OpenTelemetry, and only when on.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from vaeserve.common.tracing_setup import install_global, provider_from_environment

log = logging.getLogger(__name__)

SERVICE_NAME = "vae-server"  # OTEL_SERVICE_NAME overrides it

# The SpanRecord of the call or stream message being served; None: not traced.
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("vaeserve_span", default=None)

_lock = threading.Lock()
_installed: list[Any] = []  # [provider] set with use_tracer_provider
_from_environment: list[Any] = []  # [provider or None], configured once per process


class BatchItem(Protocol):
    """What the batcher tells about each request of a graph call (server/batching.py)."""

    trace: Any  # the caller's SpanRecord, or None
    rows: int
    queued_at: float  # time.perf_counter() when it was queued


def use_tracer_provider(provider: Any | None) -> None:
    """Trace the calls of servers started from now on into `provider` (an SDK TracerProvider,
    e.g. with the SDK's InMemorySpanExporter in tests, or an embedding application's own);
    None: back to what the OTEL_* variables configure."""
    with _lock:
        _installed[:] = [provider] if provider is not None else []


def server_tracer() -> Any | None:
    """The tracer for a server starting now: from use_tracer_provider's provider, else from
    the OTEL_* configuration (made once per process and installed as the global
    TracerProvider), else None: tracing is off."""
    with _lock:
        provider = _installed[0] if _installed else None
        if provider is None:
            if not _from_environment:
                configured = provider_from_environment(SERVICE_NAME)
                if configured is not None:
                    install_global(configured)
                _from_environment.append(configured)
            provider = _from_environment[0]
    if provider is None:
        return None
    from vaeserve.server.spans import tracer_from

    return tracer_from(provider)


def tracing_layer() -> Any | None:
    """The call layer that opens each call's span (server/spans.py), or None when off."""
    tracer = server_tracer()
    if tracer is None:
        return None
    from vaeserve.server.spans import TracingLayer

    return TracingLayer(tracer)


def current() -> Any | None:
    """The SpanRecord of the call or stream message being served; None when not traced."""
    return _CURRENT.get()


def note_model(name: str, version: int) -> None:
    """Record the model version the current call or stream message resolved."""
    record = _CURRENT.get()
    if record is not None:
        record.note_model(name, version)


def record_batch(
    graph: str,
    device: str,
    items: Sequence[BatchItem],
    started: float,
    timing: Sequence[int],
    error: BaseException | None = None,
) -> None:
    """Spans for one graph call of a dynamic batcher that served traced requests: each one's
    queue wait (to `started`, perf_counter) and the onnxruntime run (`timing`: its start and
    end, time_ns). Tracing never fails a request: an error here is logged."""
    from vaeserve.server.spans import record_batch as record

    try:
        record(graph, device, items, started, timing, error)
    except Exception:
        log.exception("recording the spans of a %s call failed", graph)
