"""Observability: Prometheus metrics, request ids, structured (JSON) logs and the access log.

Every call gets a request id: the client's `x-request-id` metadata when it sends one (printable,
at most 128 characters), else a fresh one; it is echoed back in the trailing metadata and put on
every log line written while the call runs. Metrics live in one CollectorRegistry per server
(several servers can run in one process) and are exposed over HTTP on `metrics_port`.

Counting: `vaeserve_requests_total` and `vaeserve_rows_total` count unary calls and each
message of a stream (Score, ModelStreamInfer) with its own status code, so an in-stream error
counts under its code while the stream goes on; `vaeserve_streams_total` counts whole streams.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)
access_log = logging.getLogger("vaeserve.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

# Latency buckets (seconds) from 0.1 ms to 30 s; batch buckets in rows and requests.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


@dataclass
class CallInfo:
    """What one call did, filled in while it runs; read by the interceptor at its end."""

    request_id: str
    rpc: str
    streaming: bool = False
    model: str = ""
    rows: int = 0
    messages: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)


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
    """Start a call's CallInfo in this context (the interceptor does this)."""
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


def code_name(code: grpc.StatusCode | None) -> str:
    """'OK' for None, else the status code's name."""
    return "OK" if code is None else code.name


def method_name(full_method: str) -> str:
    """'/vae.v1.VaeService/Score' -> 'Score'."""
    return full_method.rsplit("/", 1)[-1]


class Metrics:
    """The server's Prometheus metrics, on a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "vaeserve_requests",
            "Unary calls and stream messages by RPC, model and status code",
            ["rpc", "model", "code"],
            registry=r,
        )
        self.rows = Counter(
            "vaeserve_rows",
            "Rows received, by RPC, model and status code of their call or stream message",
            ["rpc", "model", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "vaeserve_request_duration_seconds",
            "Time to answer a unary call or one stream message",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams = Counter(
            "vaeserve_streams",
            "Finished request streams by RPC and final status code",
            ["rpc", "code"],
            registry=r,
        )
        self.streams_open = Gauge(
            "vaeserve_streams_open", "Request streams open now", ["rpc"], registry=r
        )
        self.queue_wait = Histogram(
            "vaeserve_queue_wait_seconds",
            "Time a request waited in the dynamic batcher before its graph call",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "vaeserve_inference_seconds",
            "Duration of one onnxruntime graph call (one merged batch)",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "vaeserve_batch_rows",
            "Rows in one onnxruntime call after dynamic batching",
            ["model", "graph"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "vaeserve_batch_requests",
            "Requests merged into one onnxruntime call",
            ["model", "graph"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.scored_rows = Counter(
            "vaeserve_scored_rows", "Rows scored, by model", ["model"], registry=r
        )
        self.anomalies = Counter(
            "vaeserve_anomalies",
            "Rows flagged as anomalies, by model and the score the flag used",
            ["model", "score"],
            registry=r,
        )
        self.provider = Gauge(
            "vaeserve_execution_provider",
            "1 for each onnxruntime execution provider in use by a loaded graph",
            ["model", "version", "graph", "provider", "device"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "vaeserve_model_load_seconds",
            "Time to load a model version, warm-up included",
            ["model", "version"],
            registry=r,
        )
        self.ready = Gauge(
            "vaeserve_ready", "1 while the server is ready to serve models", registry=r
        )
        self.auth_failures = Counter(
            "vaeserve_auth_failures", "Calls turned away UNAUTHENTICATED", ["reason"], registry=r
        )
        self.limit_rejections = Counter(
            "vaeserve_limit_rejections",
            "Calls or stream messages refused RESOURCE_EXHAUSTED, by the setting that refused",
            ["limit"],
            registry=r,
        )
        self._provider_labels: dict[tuple[str, int], list[tuple[str, ...]]] = {}

    # ---- recording -----------------------------------------------------------------------
    def observe_request(
        self, rpc: str, model: str, code: grpc.StatusCode | None, rows: int, seconds: float
    ) -> None:
        """Count one unary call or stream message; stream messages also update their CallInfo."""
        name = code_name(code)
        self.requests.labels(rpc, model, name).inc()
        if rows:
            self.rows.labels(rpc, model, name).inc(rows)
        self.latency.labels(rpc).observe(seconds)

    def observe_stream_message(
        self, model: str, code: grpc.StatusCode | None, rows: int, seconds: float
    ) -> None:
        """Count one message of the current stream and add it to the stream's CallInfo."""
        info = _CALL.get()
        rpc = info.rpc if info is not None else "stream"
        self.observe_request(rpc, model, code, rows, seconds)
        if info is not None:
            info.messages += 1
            info.rows += rows
            if model:
                info.model = model
            if code is not None:
                info.errors += 1

    def rejected(self, exc: Any) -> None:
        """Count a RequestError that names the limit it enforces (others are ignored)."""
        limit = getattr(exc, "limit", "")
        if limit:
            self.limit_rejections.labels(limit).inc()

    def scored(self, model: str, score: str, flags: Any) -> None:
        """Count scored rows and the ones flagged (flags: a boolean array)."""
        n = len(flags)
        if n:
            self.scored_rows.labels(model).inc(n)
            self.anomalies.labels(model, score).inc(int(flags.sum()))
        else:  # make the series exist so dashboards show 0, not "no data"
            self.anomalies.labels(model, score)

    def batch_observer(self, model: str, graph: str) -> Any:
        """A BatchObserver for one model's graph (see server/batching.py)."""
        rows_h = self.batch_rows.labels(model, graph)
        reqs_h = self.batch_requests.labels(model, graph)
        wait_h = self.queue_wait.labels(model, graph)
        run_h = self.inference.labels(model, graph)

        def observe(
            rows: int, requests: int, queue_waits: Sequence[float], run_seconds: float
        ) -> None:
            rows_h.observe(rows)
            reqs_h.observe(requests)
            for w in queue_waits:
                wait_h.observe(w)
            run_h.observe(run_seconds)

        return observe

    def model_loaded(self, model: Any) -> None:
        """Publish a loaded version's execution providers and load time."""
        labels = []
        for graph, runner in sorted(model.runners.items()):
            for provider in runner.providers:
                lv = (model.name, str(model.version), graph, provider, model.device)
                self.provider.labels(*lv).set(1)
                labels.append(lv)
        self._provider_labels[(model.name, model.version)] = labels
        self.model_load_seconds.labels(model.name, str(model.version)).set(model.load_seconds)

    def model_unloaded(self, name: str, version: int) -> None:
        """Withdraw an unloaded version's series."""
        for lv in self._provider_labels.pop((name, version), []):
            with suppress(KeyError):
                self.provider.remove(*lv)
        with suppress(KeyError):
            self.model_load_seconds.remove(name, str(version))

    def render(self) -> bytes:
        """The metrics page in Prometheus text format."""
        return generate_latest(self.registry)


class MetricsEndpoint:
    """prometheus-client's HTTP server for one registry, on a thread; stop() frees the port."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        host = host.strip("[]") or "0.0.0.0"
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.port = int(self.httpd.server_address[1])

    def stop(self) -> None:
        """Shut the HTTP server down and close its socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- logging -----------------------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the current call's, or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always passes the record on."""
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message` and, for records with fields, key=value pairs."""

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


# ---- the interceptor ---------------------------------------------------------------------
class ObservabilityInterceptor:
    """A call layer (see server/interception.py): request ids, call metrics, the access log.

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
            code = context.code()
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            seconds = time.perf_counter() - info.started
            if streaming:
                self.metrics.streams_open.labels(info.rpc).dec()
                self.metrics.streams.labels(info.rpc, code_name(code)).inc()
            else:
                self.metrics.observe_request(info.rpc, info.model, code, info.rows, seconds)
            if self.access:
                self._log(info, method, code, seconds, streaming, peer)

    def _log(
        self,
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


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the peer went away
        return grpc.StatusCode.CANCELLED
    return context.code() or grpc.StatusCode.UNKNOWN
