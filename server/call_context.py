"""The call being served: its request id and what it did, kept in a context variable.

The bottom of the observability modules (it imports none of them): the call layer starts a
CallInfo per call, servicers note the model and rows on it, and log records and metrics read it.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass
class CallInfo:
    """What one call did, filled in while it runs; read by the call layer at its end."""

    request_id: str
    rpc: str
    streaming: bool = False
    model: str = ""
    rows: int = 0
    messages: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)
    trace_id: str = ""  # the OpenTelemetry trace id (32 hex digits) when the call is traced


_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "vaeserve_call", default=None
)


def current_call() -> CallInfo | None:
    """The CallInfo of the call being served in this context, if any."""
    return _CALL.get()


def current_request_id() -> str | None:
    """The request id of the call being served in this context, if any."""
    info = _CALL.get()
    return info.request_id if info is not None else None


def begin_call(request_id: str, rpc: str, streaming: bool = False) -> CallInfo:
    """Start a call's CallInfo in this context (the call layer does this)."""
    info = CallInfo(request_id=request_id, rpc=rpc, streaming=streaming)
    _CALL.set(info)
    return info


def note_call(model: str | None = None, rows: int | None = None) -> None:
    """Record the model and rows of the current unary call (a no-op outside one: streams count
    their messages with Metrics.observe_stream_message)."""
    info = _CALL.get()
    if info is None or info.streaming:
        return
    if model is not None:
        info.model = model
    if rows is not None:
        info.rows = rows


def request_id_from(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The client's x-request-id when it is usable, else a new random id (32 hex digits)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _VALID_ID.match(value):
            return value
    return uuid.uuid4().hex
