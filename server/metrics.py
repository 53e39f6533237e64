"""Prometheus metrics: one CollectorRegistry per server (several can run in one process),
served over HTTP on `metrics_port`.

Counting: `vaeserve_requests_total` and `vaeserve_rows_total` count unary calls and each
message of a stream (Score, ModelStreamInfer) with its own status code, so an in-stream error
counts under its code while the stream goes on; `vaeserve_streams_total` counts whole streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vaeserve.server.call_context import current_call

# Latency buckets (seconds) from 0.1 ms to 30 s; batch buckets in rows and requests.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)

CALL_LABELS = ("rpc", "model", "code")
GRAPH_LABELS = ("model", "graph")


def code_name(code: grpc.StatusCode | None) -> str:
    """'OK' for None, else the status code's name."""
    return "OK" if code is None else code.name


class Metrics:
    """The server's Prometheus metrics, on a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r)

        def histogram(
            name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=buckets, registry=r)

        self.requests = counter(
            "vaeserve_requests",
            "Unary calls and stream messages by RPC, model and status code",
            CALL_LABELS,
        )
        self.rows = counter(
            "vaeserve_rows",
            "Rows that passed validation, by RPC, model and status code of their call or stream "
            "message (a rejected request adds none, whatever shape it declared)",
            CALL_LABELS,
        )
        self.latency = histogram(
            "vaeserve_request_duration_seconds",
            "Time to answer a unary call or one stream message",
            ["rpc"],
            LATENCY_BUCKETS,
        )
        self.streams = counter(
            "vaeserve_streams",
            "Finished request streams by RPC and final status code",
            ["rpc", "code"],
        )
        self.streams_open = gauge("vaeserve_streams_open", "Request streams open now", ["rpc"])
        self.queue_wait = histogram(
            "vaeserve_queue_wait_seconds",
            "Time a request waited in the dynamic batcher before its graph call",
            GRAPH_LABELS,
            LATENCY_BUCKETS,
        )
        self.inference = histogram(
            "vaeserve_inference_seconds",
            "Duration of one onnxruntime graph call (one merged batch)",
            GRAPH_LABELS,
            LATENCY_BUCKETS,
        )
        self.batch_rows = histogram(
            "vaeserve_batch_rows",
            "Rows in one onnxruntime call after dynamic batching",
            GRAPH_LABELS,
            ROW_BUCKETS,
        )
        self.batch_requests = histogram(
            "vaeserve_batch_requests",
            "Requests merged into one onnxruntime call",
            GRAPH_LABELS,
            REQUEST_BUCKETS,
        )
        self.scored_rows = counter("vaeserve_scored_rows", "Rows scored, by model", ["model"])
        self.anomalies = counter(
            "vaeserve_anomalies",
            "Rows flagged as anomalies, by model and the score the flag used",
            ["model", "score"],
        )
        self.provider = gauge(
            "vaeserve_execution_provider",
            "1 for each onnxruntime execution provider in use by a loaded graph",
            ["model", "version", "graph", "provider", "device"],
        )
        self.model_load_seconds = gauge(
            "vaeserve_model_load_seconds",
            "Time to load a model version, warm-up included",
            ["model", "version"],
        )
        self.ready = gauge("vaeserve_ready", "1 while the server is ready to serve models")
        self.auth_failures = counter(
            "vaeserve_auth_failures", "Calls turned away UNAUTHENTICATED", ["reason"]
        )
        self.limit_rejections = counter(
            "vaeserve_limit_rejections",
            "Calls or stream messages refused RESOURCE_EXHAUSTED, by the setting that refused",
            ["limit"],
        )
        self.drift_kl = gauge(
            "vaeserve_drift_kl",
            "KL(N(window) || N(reference)) in nats between the moment-matched Gaussians of the "
            "posteriors of the rows a model version scored last and of its validation rows",
            ["model", "version"],
        )
        self.drift_p_value = gauge(
            "vaeserve_drift_p_value",
            "P(KL >= vaeserve_drift_kl) if the scored rows came from the validation rows' "
            "distribution (set from 16 rows in the window on)",
            ["model", "version"],
        )
        self.drift_window_rows = gauge(
            "vaeserve_drift_window_rows",
            "Rows in a model version's drift window at its last evaluation",
            ["model", "version"],
        )
        self._provider_labels: dict[tuple[str, int], list[tuple[str, ...]]] = {}

    # ---- recording -----------------------------------------------------------------------
    def observe_request(
        self, rpc: str, model: str, code: grpc.StatusCode | None, rows: int, seconds: float
    ) -> None:
        """Count one unary call or stream message."""
        name = code_name(code)
        self.requests.labels(rpc, model, name).inc()
        if rows:
            self.rows.labels(rpc, model, name).inc(rows)
        self.latency.labels(rpc).observe(seconds)

    def observe_stream_message(
        self, model: str, code: grpc.StatusCode | None, rows: int, seconds: float
    ) -> None:
        """Count one message of the current stream and add it to the stream's CallInfo."""
        info = current_call()
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

    def drift_observed(self, model: str, version: int, reading: Any) -> None:
        """Publish a drift reading (server/monitoring.py's DriftReading) of a model version;
        KL and p-value only once the window has rows, and a p-value at all."""
        labels = (model, str(version))
        self.drift_window_rows.labels(*labels).set(reading.rows)
        if reading.rows:
            self.drift_kl.labels(*labels).set(reading.kl)
        if reading.p_value is not None:
            self.drift_p_value.labels(*labels).set(reading.p_value)

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
        for gauge in (
            self.model_load_seconds,
            self.drift_kl,
            self.drift_p_value,
            self.drift_window_rows,
        ):
            with suppress(KeyError):
                gauge.remove(name, str(version))

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
