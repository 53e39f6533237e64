"""Log formatting: text lines or one JSON object per line, each with the call's request id."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from vaeserve.server.call_context import current_call


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the current call's, or None) to every record, and `trace_id` when
    the call is traced (JSON lines then carry it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always passes the record on."""
        if not hasattr(record, "request_id"):
            info = current_call()
            record.request_id = info.request_id if info is not None else None
            if info is not None and info.trace_id:
                record.trace_id = info.trace_id
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message` (plus a traceback when there is one)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus a traceback when there is one)."""
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "rid", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extra fields.

    Extra fields come from `extra={"fields": {...}}` (merged into the object) and from plain
    `extra={...}` keys.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single-line JSON object."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key == "fields" and isinstance(value, dict):
                out.update(value)
            elif key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Send all logging to stderr (or `stream`) as text lines or JSON objects, with request ids.

    Replaces the root logger's handlers, so calling it again switches format.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
