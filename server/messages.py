"""Messages at the edge of every call: request bytes that do not parse and messages over
`max_message_bytes`, answered with a status that says what to fix, inside the call layers (so
the access log and the metrics count them like any other refusal).

grpc would answer bytes that do not parse UNKNOWN, naming a Python exception and logging a
traceback per call, and a message over its own size limit with its own text. Instead each
handler's deserializer is wrapped (see server/interception.py) so that it never raises: it
returns a `Refused` for the call to abort with, once the layers are entered. grpc's own
receive limit is set to RECEIVE_CAP_FACTOR times the setting, so requests up to that size
reach this check (beyond it grpc refuses them before reading them, with its own text).
Responses are measured before they are sent, so one over the limit is refused by name rather
than failing in grpc after being counted OK.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vaeserve.server.metrics import Metrics

log = logging.getLogger(__name__)

RECEIVE_CAP_FACTOR = 2  # grpc's own receive limit, in multiples of max_message_bytes
LIMIT = "max_message_bytes"


@dataclass(frozen=True)
class Refused:
    """What a request message deserialised to when it cannot be served."""

    code: grpc.StatusCode
    message: str
    limit: str = ""
    reason: str = ""  # for the server's log line


def receive_cap(max_message_bytes: int) -> int:
    """grpc's receive limit for a server whose setting is max_message_bytes."""
    return max_message_bytes * RECEIVE_CAP_FACTOR


def _message_name(deserializer: Callable[[bytes], Any] | None) -> str:
    """'vae.v1.EncodeRequest' for a generated FromString, else 'the request message type'."""
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "") or "the request message type"


class MessageGuard:
    """Checks request and response messages of every call against max_message_bytes and
    turns undecodable request bytes into INVALID_ARGUMENT."""

    def __init__(self, max_message_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_message_bytes
        self.metrics = metrics

    def deserializer(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """`inner` wrapped so it returns a Refused instead of raising or taking too much."""
        if inner is None:
            return None
        what = _message_name(inner)
        max_bytes = self.max_bytes

        def deserialize(data: bytes) -> Any:
            if len(data) > max_bytes:
                return Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request message is {len(data)} bytes; this server takes at most "
                    f"{max_bytes} bytes per message (setting {LIMIT}); send fewer rows per "
                    "request",
                    limit=LIMIT,
                    reason=f"{len(data)}-byte request over {LIMIT}",
                )
            try:
                return inner(data)
            except Exception as exc:  # DecodeError, and whatever else bad bytes provoke
                return Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request bytes do not parse as a {what} message (protobuf wire "
                    "format); send a serialized message of that type",
                    reason=f"{len(data)} undecodable bytes ({type(exc).__name__})",
                )

        return deserialize

    async def refuse(
        self, refused: Refused, method: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Log one warning line, count a limit, and abort the call with `refused`."""
        if refused.limit and self.metrics is not None:
            self.metrics.limit_rejections.labels(refused.limit).inc()
        log.warning(
            "refused a call to %s from %s: %s",
            method,
            context.peer(),
            refused.reason or refused.message,
            extra={"fields": {"refused": refused.code.name, "method": method}},
        )
        await context.abort(refused.code, refused.message)

    async def admit(self, request: Any, method: str, context: grpc.aio.ServicerContext) -> None:
        """Abort the call when its (unary) request was refused."""
        if isinstance(request, Refused):
            await self.refuse(request, method, context)

    async def check_response(
        self, response: Any, method: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Abort RESOURCE_EXHAUSTED, naming the setting, when a response is over the limit."""
        size = getattr(response, "ByteSize", None)
        n = size() if callable(size) else 0
        if n > self.max_bytes:
            await self.refuse(
                Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the response would be {n} bytes; this server sends at most "
                    f"{self.max_bytes} bytes per message (setting {LIMIT}); ask for fewer "
                    "rows per request",
                    limit=LIMIT,
                    reason=f"{n}-byte response over {LIMIT}",
                ),
                method,
                context,
            )


class CheckedRequests:
    """A request stream that ends at the first refused message and remembers it, so the call
    can answer what came before and then abort with it."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests
        self.refused: Refused | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for message in self.requests:
            if isinstance(message, Refused):
                self.refused = message
                return
            yield message
