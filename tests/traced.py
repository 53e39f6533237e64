"""Traced test servers: an in-process server whose spans go to the OpenTelemetry SDK's
InMemorySpanExporter (the SDK's own test facility), and a reader of those spans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import serving
from vaeserve.server import VaeServer, tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Spans:
    """The finished spans of one TracerProvider, by name, parent and trace."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def clear(self) -> None:
        self.exporter.clear()

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> list[ReadableSpan]:
        """The spans called `name` once there are `count` of them (a server span ends just
        after its call's status is sent)."""
        deadline = time.monotonic() + timeout
        while len(self.named(name)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        found = self.named(name)
        assert len(found) == count, (name, [s.name for s in self.all()])
        return found

    def by_id(self, span_id: int) -> ReadableSpan:
        return next(s for s in self.all() if s.context.span_id == span_id)

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        pid = parent.context.span_id
        return [s for s in self.all() if s.parent is not None and s.parent.span_id == pid]


def hex_trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def hex_span_id(span_id: int) -> str:
    return format(span_id, "016x")


@contextmanager
def traced_serving(repo: Path, **overrides: object) -> Iterator[tuple[VaeServer, Spans]]:
    """A server on `repo` (tests/conftest.py `serving`) tracing into a fresh in-memory
    exporter, for the length of the block."""
    spans = Spans()
    tracing.use_tracer_provider(spans.provider)
    try:
        with serving(repo, **overrides) as server:
            tracing.use_tracer_provider(None)  # the started server keeps its tracer
            yield server, spans
    finally:
        tracing.use_tracer_provider(None)
        spans.provider.shutdown()
