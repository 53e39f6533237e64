"""The server's OpenTelemetry spans (the `tracing` extra; imported only when tracing is on).

    vae.v1.VaeService/Score            SERVER, parent: the caller's W3C traceparent
    ├── Score message                  one per stream message
    │   ├── batcher.wait               queued in the dynamic batcher until its graph call
    │   └── onnxruntime.run            the graph call (merged requests: see record_batch)
    └── Score message ...

A unary call has its batcher.wait and onnxruntime.run spans right under its SERVER span.
Attributes follow the gRPC semantic conventions (rpc.system, rpc.service, rpc.method,
rpc.grpc.status_code) plus vaeserve.* (model, version, rows, request id, status name). As
those conventions say for servers, only codes that mean a server fault (UNKNOWN, INTERNAL,
UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED, DATA_LOSS) mark a span as an error; a client's
mistake such as INVALID_ARGUMENT shows in rpc.grpc.status_code and vaeserve.status.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, format_trace_id

from vaeserve.server.call_context import CallInfo, current_call
from vaeserve.server.layers import HEALTH_PREFIX, call_code, ended_code
from vaeserve.server.tracing import _CURRENT, BatchItem

T = TypeVar("T")

INSTRUMENTATION = "vaeserve.server"
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def tracer_from(provider: Any) -> trace.Tracer:
    """The server's tracer from an SDK TracerProvider."""
    from importlib.metadata import version

    return provider.get_tracer(INSTRUMENTATION, version("vaeserve"))


def status_attributes(code: grpc.StatusCode | None) -> dict[str, Any]:
    """rpc.grpc.status_code (the number) and vaeserve.status (the name); None is OK."""
    code = code or grpc.StatusCode.OK
    return {"rpc.grpc.status_code": code.value[0], "vaeserve.status": code.name}


def end_span(span: trace.Span, code: grpc.StatusCode | None, attributes: dict[str, Any]) -> None:
    """Set the outcome's attributes (and ERROR for a server fault), then end the span."""
    span.set_attributes({**attributes, **status_attributes(code)})
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class SpanRecord:
    """A recording span of ours (a call's or a stream message's) and what it learns while it
    runs; `stream` is the stream's record for a message."""

    __slots__ = (
        "context",
        "messages",
        "model",
        "noted",
        "rpc",
        "span",
        "stream",
        "tracer",
        "version",
    )

    def __init__(
        self,
        tracer: trace.Tracer,
        span: trace.Span,
        context: otel_context.Context,
        rpc: str,
        stream: SpanRecord | None = None,
    ) -> None:
        self.tracer = tracer
        self.span = span
        self.context = context  # the OpenTelemetry context with this span current
        self.rpc = rpc
        self.stream = stream
        # a message starts with the model its stream last resolved (a Score stream pins it)
        self.model = stream.model if stream is not None else ""
        self.version = stream.version if stream is not None else 0
        self.noted = False  # whether this call or message resolved a model itself
        self.messages = 0

    def note_model(self, name: str, version: int) -> None:
        """The model version this call or message resolved (a stream keeps it for the next)."""
        self.model, self.version, self.noted = name, version, True
        if self.stream is not None:
            self.stream.model, self.stream.version = name, version

    def model_attributes(self) -> dict[str, Any]:
        """vaeserve.model and vaeserve.version, when known."""
        if not self.model:
            return {}
        return {"vaeserve.model": self.model, "vaeserve.version": self.version}

    def message(self) -> SpanRecord | None:
        """A child record for the stream's next message (None when its span does not record)."""
        index = self.messages
        self.messages += 1
        span = self.tracer.start_span(
            f"{self.rpc} message", context=self.context, attributes={"vaeserve.message": index}
        )
        if not span.is_recording():
            return None
        context = trace.set_span_in_context(span, self.context)
        return SpanRecord(self.tracer, span, context, self.rpc, stream=self)

    def run(self, start: Callable[[], T]) -> T:
        """Call `start` (which creates the message's task) with this record's span current, so
        that task and everything it calls sees it."""
        return contextvars.copy_context().run(self._run, start)

    def _run(self, start: Callable[[], T]) -> T:
        otel_context.attach(self.context)  # never detached: this context copy is dropped
        _CURRENT.set(self)
        return start()

    def end_message(self, model: str, rows: int, code: grpc.StatusCode | None) -> None:
        """End a message's span with its answer: model, validated rows, status. A message that
        resolved no model itself has its stream's only when its answer names that one."""
        attributes: dict[str, Any] = {"vaeserve.rows": rows}
        if self.noted or (self.model and model == self.model):
            attributes.update(self.model_attributes())
        elif model:
            attributes["vaeserve.model"] = model
        end_span(self.span, code, attributes)


class TracingLayer:
    """A call layer (server/interception.py): each call but health checks in a SERVER span
    whose parent is the caller's propagated context (W3C `traceparent` metadata)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Run the call with its span current; end the span with the call's outcome."""
        if method.startswith(HEALTH_PREFIX):
            yield
            return
        service, _, rpc = method.lstrip("/").partition("/")
        parent = propagate.extract(_carrier(context.invocation_metadata()))
        info = current_call()
        rid = info.request_id if info is not None else ""
        span = self.tracer.start_span(
            f"{service}/{rpc}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": rpc,
                "vaeserve.request_id": rid,
            },
        )
        ctx = trace.set_span_in_context(span, parent)
        record = SpanRecord(self.tracer, span, ctx, rpc) if span.is_recording() else None
        span_context = span.get_span_context()
        if info is not None and span_context.is_valid:
            info.trace_id = format_trace_id(span_context.trace_id)
        token = otel_context.attach(ctx)
        current = _CURRENT.set(record)
        code: grpc.StatusCode | None = None
        try:
            yield
            code = ended_code(context)
        except BaseException as exc:
            code = call_code(exc, context)
            raise
        finally:
            try:
                _CURRENT.reset(current)
            except ValueError:
                pass  # a cancelled stream ends in another context: nothing to restore there
            else:
                otel_context.detach(token)
            if record is not None:
                end_span(span, code, _call_attributes(record, info, streaming))


def _carrier(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    return {k: v for k, v in metadata or () if isinstance(v, str)}


def _call_attributes(record: SpanRecord, info: CallInfo | None, streaming: bool) -> dict[str, Any]:
    attributes = record.model_attributes()
    if info is None:
        return attributes
    if info.model and "vaeserve.model" not in attributes:
        attributes["vaeserve.model"] = info.model
    attributes["vaeserve.rows"] = info.rows
    if streaming:
        attributes["vaeserve.messages"] = info.messages
        attributes["vaeserve.message_errors"] = info.errors
    return attributes


def record_batch(
    graph: str,
    device: str,
    items: Sequence[BatchItem],
    started: float,
    timing: Sequence[int],
    error: BaseException | None = None,
) -> None:
    """Spans for one graph call of a dynamic batcher.

    A merged call serves several requests, each in its own trace. Its `onnxruntime.run` span
    is a child of the first traced request's span, so that trace shows the call in place, and
    links to the other requests' spans; each request's `batcher.wait` span (a child of its own
    span) links back to the run span, so every trace leads to the call that served it without
    the call being recorded once per request.
    """
    traced = [item for item in items if item.trace is not None]
    if not traced:
        return
    first: SpanRecord = traced[0].trace
    offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
    started_ns = int(started * 1e9) + offset_ns
    begin, end = timing[0] or started_ns, timing[1] or time.time_ns()
    run = first.tracer.start_span(
        "onnxruntime.run",
        context=first.context,
        start_time=begin,
        attributes={
            **first.model_attributes(),
            "vaeserve.graph": graph,
            "vaeserve.device": device,
            "vaeserve.rows": sum(item.rows for item in items),
            "vaeserve.batch_requests": len(items),
        },
        links=[Link(item.trace.span.get_span_context()) for item in traced[1:]],
    )
    if error is not None:
        run.record_exception(error)
        run.set_status(Status(StatusCode.ERROR, type(error).__name__))
    run.end(end_time=end)
    to_run = [Link(run.get_span_context())]
    for item in traced:
        record: SpanRecord = item.trace
        wait = record.tracer.start_span(
            "batcher.wait",
            context=record.context,
            start_time=int(item.queued_at * 1e9) + offset_ns,
            attributes={"vaeserve.graph": graph, "vaeserve.rows": item.rows},
            links=to_run,
        )
        wait.end(end_time=started_ns)
