"""gRPC plumbing both servicers share: unary RPCs' error mapping and pipelined request streams.

A servicer using these has a `dataplane` (server/dataplane.py): its readiness check runs before
each RPC and its metrics count refusals and stream messages.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from vaeserve.server import tracing
from vaeserve.server.call_context import current_request_id
from vaeserve.server.dataplane import DataPlane
from vaeserve.server.errors import RequestError
from vaeserve.server.metrics import Metrics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
R = TypeVar("R")


def request_error(exc: Exception, action: str, subject: str = "") -> RequestError:
    """A RequestError as it is; any other error is logged (with its traceback, for the
    operator) and becomes INTERNAL with a message that gives the client no server details."""
    if isinstance(exc, RequestError):
        return exc
    log.exception("%s failed", f"{action} {subject}" if subject else action)
    rid = current_request_id()
    return RequestError(
        grpc.StatusCode.INTERNAL,
        f"{action} failed on the server (an internal error"
        + (f", logged with request id {rid}" if rid else ", logged")
        + "); please report it",
    )


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Decorate a servicer's unary RPC: readiness check, RequestError -> its status, other
    errors -> INTERNAL (logged)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            self.dataplane.check_ready()
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            err = request_error(exc, fn.__name__)
            self.dataplane.metrics.rejected(err)
            await context.abort(err.code, err.message)
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


def done(value: Any) -> asyncio.Future:
    """A future that already holds `value`."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


@dataclass
class Answer(Generic[Resp]):
    """One stream message's response with what the metrics need to know about it."""

    response: Resp
    model: str = ""
    code: grpc.StatusCode | None = None
    rows: int = 0


async def open_stream(
    dataplane: DataPlane,
    context: grpc.aio.ServicerContext,
    start: Callable[[Req], Awaitable[Answer[Resp]]],
    rows: Callable[[Req], int],
    reject: Callable[[Req, RequestError], Answer[Resp]],
) -> RequestStream[Req, Resp]:
    """A request-streaming RPC's RequestStream with the server's stream_pipeline_depth and
    max_stream_inflight_rows; the call is aborted UNAVAILABLE while the server is not ready."""
    try:
        dataplane.check_ready()
    except RequestError as exc:
        await context.abort(exc.code, exc.message)
    return RequestStream(
        start=start,
        rows=rows,
        reject=reject,
        depth=dataplane.settings.stream_pipeline_depth,
        max_inflight_rows=dataplane.settings.max_stream_inflight_rows,
        metrics=dataplane.metrics,
    )


class RequestStream(Generic[Req, Resp]):
    """A bidirectional stream answered in order with up to `depth` messages in flight.

    `start(msg)` begins one message's work and returns an awaitable Answer (called in message
    order, so it may resolve state such as a stream's pinned model); `rows(msg)` is the rows a
    message declares; `reject(msg, error)` answers a message refused before its work starts.
    A message that would take the rows received but not yet answered over
    `max_inflight_rows` (0: no limit) is answered RESOURCE_EXHAUSTED without being run.
    Reading stops while `depth` messages are queued (back-pressure), so memory stays bounded.
    When the stream is traced, each message runs in its own span (server/spans.py).
    """

    def __init__(
        self,
        start: Callable[[Req], Awaitable[Answer[Resp]]],
        rows: Callable[[Req], int],
        reject: Callable[[Req, RequestError], Answer[Resp]],
        depth: int,
        max_inflight_rows: int,
        metrics: Metrics,
    ) -> None:
        self.start = start
        self.rows = rows
        self.reject = reject
        self.depth = depth
        self.max_inflight_rows = max_inflight_rows
        self.metrics = metrics
        self.inflight_rows = 0
        self.trace = tracing.current()  # the stream's span record; None: not traced

    def _begin(self, msg: Req) -> tuple[asyncio.Future, int, float, Any]:
        t0 = time.perf_counter()
        span = self.trace.message() if self.trace is not None else None
        n = max(0, int(self.rows(msg)))
        cap = self.max_inflight_rows
        if cap and self.inflight_rows + n > cap:
            err = RequestError.too_large(
                f"this stream has {self.inflight_rows} rows in flight and this message adds "
                f"{n}; the limit is {cap} rows received but not yet answered per stream "
                "(setting max_stream_inflight_rows); read answers before sending more, or "
                "send smaller batches",
                limit="max_stream_inflight_rows",
            )
            self.metrics.rejected(err)
            return done(self.reject(msg, err)), 0, t0, span
        self.inflight_rows += n
        if span is not None:
            return span.run(lambda: asyncio.ensure_future(self.start(msg))), n, t0, span
        return asyncio.ensure_future(self.start(msg)), n, t0, span

    async def run(self, requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        """Read `requests`, yield one response per message in order."""
        queue: asyncio.Queue[tuple[asyncio.Future, int, float, Any] | None] = asyncio.Queue(
            maxsize=self.depth
        )
        read_error: list[BaseException] = []

        async def reader() -> None:
            try:
                async for msg in requests:
                    await queue.put(self._begin(msg))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the call broke (e.g. cancelled by the peer)
                read_error.append(exc)
            await queue.put(None)

        reader_task = asyncio.create_task(reader(), name="stream-reader")
        waiting = None  # the span of the message being awaited, ended if the stream breaks
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                fut, n, t0, waiting = item
                answer: Answer[Resp] = await fut
                self.metrics.observe_stream_message(
                    answer.model, answer.code, answer.rows, time.perf_counter() - t0
                )
                if waiting is not None:
                    waiting.end_message(answer.model, answer.rows, answer.code)
                    waiting = None
                yield answer.response
                self.inflight_rows -= n
            if read_error:
                raise read_error[0]
        finally:
            reader_task.cancel()
            if waiting is not None:
                waiting.end_message("", 0, grpc.StatusCode.CANCELLED)
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    item[0].cancel()
                    if item[3] is not None:
                        item[3].end_message("", 0, grpc.StatusCode.CANCELLED)
