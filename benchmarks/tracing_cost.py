"""What OpenTelemetry tracing costs the server: Score stream rows/s with tracing off and on,
side by side in one run.

Four `vae-server` subprocesses on one model repository (TrainConfig's default 64-256-128-8 VAE
on builtin:digits, one epoch: speed does not depend on the fit):

- `before`: the server of `--baseline` (the commit before tracing, benchmarks/revisions.py):
  no hooks at all;
- `off`: this checkout, no OTEL_* variables (the hooks only, each one context-variable read);
- `on`: OTEL_TRACES_EXPORTER=otlp to an OTLP/gRPC receiver in this process that counts and
  drops what it gets, every trace sampled: a span per stream, per message, per batcher wait
  and per onnxruntime run, batched and sent by the SDK's BatchSpanProcessor;
- `unsampled`: the same with OTEL_TRACES_SAMPLER=always_off: the stream span is made but
  records nothing, so no message, wait or run spans.

Each run sends `--messages-B` ScoreRequests of B rows on one stream (raw stub, so client-side
tracing is not in the figure) and times it to the last answer; runs are interleaved over
servers and batch sizes with the order rotated each repeat, and each point is the median of
`--repeats`. All four servers stay up (idle while another is measured); the machine's other
work shifts all of them alike, which is why the figures to read are the ratios. Each run also
reads the server's CPU time (/proc) from its start to 1 s after its last answer (the `on`
servers export within 0.5 s, OTEL_BSP_SCHEDULE_DELAY=500), so the server CPU per message,
which other load disturbs far less than wall time, says what tracing adds.

    python -m benchmarks.tracing_cost [--baseline REV] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc

from benchmarks.machine import machine_description
from benchmarks.procfs import process_cpu_seconds
from benchmarks.record import results_record, write_results
from benchmarks.revisions import unpack_revision
from benchmarks.server_process import ServerProcess
from benchmarks.worst_request import Client, prepare, score_message, tile

RESULTS = Path(__file__).parent / "results"
DEFAULT_BASELINE = "1f93719"  # the merge before tracing
CONFIGS = ("before", "off", "on", "unsampled")
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpSink:
    """An OTLP/gRPC trace receiver on a free loopback port: counts requests and spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

        self._parse = pb.ExportTraceServiceRequest.FromString
        self.requests = 0
        self.spans = 0
        self._lock = threading.Lock()
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self.server = grpc.server(ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        message = self._parse(request)
        n = sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        with self._lock:
            self.requests += 1
            self.spans += n
        return b""  # an empty ExportTraceServiceResponse: all accepted

    def stop(self) -> None:
        self.server.stop(0)


def server_env(config: str, sink_port: int) -> dict[str, str]:
    """The OTEL_* variables of one configuration."""
    if config not in ("on", "unsampled"):
        return {}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_TRACES_SAMPLER": "always_on" if config == "on" else "always_off",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }


SETTLE_S = 1.0  # after a run, before its server's CPU time is read: its spans are exported


def run_stream(client: Client, messages: list[Any], pid: int | None = None) -> tuple[float, float]:
    """Send the messages on one Score stream: rows/s to the last answer, and (with the
    server's `pid`) its CPU microseconds per message to SETTLE_S after that."""
    rows = sum(m.rows.shape[0] for m in messages)
    cpu0 = process_cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    answers = client.score(messages)
    seconds = time.perf_counter() - t0
    if any(a.HasField("error") for a in answers):
        raise RuntimeError("the server answered an error")
    if not pid:
        return rows / seconds, 0.0
    time.sleep(SETTLE_S)
    return rows / seconds, (process_cpu_seconds(pid) - cpu0) / len(messages) * 1e6


def measure(
    servers: dict[str, ServerProcess],
    sink: OtlpSink,
    x: Any,
    sizes: dict[int, int],
    repeats: int,
) -> dict[str, Any]:
    """rows/s per configuration and batch size, runs interleaved with a rotating order."""
    messages = {
        b: [score_message("digits", tile(x, b), batch_id=str(i)) for i in range(n)]
        for b, n in sizes.items()
    }
    clients = {name: Client(s.target) for name, s in servers.items()}
    runs: dict[int, dict[str, list[float]]] = {b: {c: [] for c in servers} for b in sizes}
    cpu: dict[int, dict[str, list[float]]] = {b: {c: [] for c in servers} for b in sizes}
    spans_before = sink.spans
    try:
        for c in clients.values():  # warm up every server at every size
            for b in sizes:
                run_stream(c, messages[b][:8])
        names = list(servers)
        for i in range(repeats):
            for b in sizes:
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    rate, cpu_us = run_stream(clients[name], messages[b], servers[name].proc.pid)
                    runs[b][name].append(rate)
                    cpu[b][name].append(cpu_us)
            print(f"repeat {i + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        for c in clients.values():
            c.close()
    time.sleep(6.0)  # the BatchSpanProcessor's schedule delay: let the last spans arrive
    out: dict[str, Any] = {}
    for b, per in runs.items():
        point: dict[str, Any] = {
            name: {
                "rows_per_s_median": round(statistics.median(r)),
                "runs": [round(v) for v in r],
                "server_cpu_us_per_message_median": round(statistics.median(cpu[b][name]), 1),
                "server_cpu_us_per_message": [round(v, 1) for v in cpu[b][name]],
            }
            for name, r in per.items()
        }
        point["ratios"] = ratios(per)
        point["cpu_ratios"] = ratios(cpu[b])
        point["messages_per_run"] = sizes[b]
        out[str(b)] = point
    out["spans_exported"] = sink.spans - spans_before
    out["export_requests"] = sink.requests
    return out


PAIRS = (("off", "before"), ("on", "off"), ("unsampled", "off"))


def ratios(
    per: dict[str, list[float]], pairs: Sequence[tuple[str, str]] = PAIRS
) -> dict[str, dict[str, float]]:
    """Median ratios (with the range of the same-repeat ratios, a noise indicator)."""
    out = {}
    for a, b in pairs:
        if a in per and b in per:
            each = [x / y for x, y in zip(per[a], per[b], strict=True)]
            out[f"{a}/{b}"] = {
                "median_ratio": round(statistics.median(per[a]) / statistics.median(per[b]), 3),
                "min": round(min(each), 3),
                "max": round(max(each), 3),
            }
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as a short report."""
    m = results["measured"]
    sizes = [k for k in m if k.isdigit()]
    lines = [
        "# Tracing cost: Score stream throughput, tracing off and on",
        "",
        "`python -m benchmarks.tracing_cost`: one Score stream of "
        + ", ".join(f"{m[b]['messages_per_run']} messages of {b} rows" for b in sizes)
        + f" per run, {results['repeats']} interleaved repeats, median rows/s "
        f"({results['machine'].get('cpu_model', '')}, {results['machine'].get('cpu_usable', '')} "
        f"cores shared by client, server and OTLP receiver; opentelemetry-sdk "
        f"{results['opentelemetry_sdk']}). `before`: commit "
        f"{results['baseline']} (no tracing code); `off`: no OTEL_* variables; `on`: every "
        "span exported over OTLP/gRPC to a local receiver; `unsampled`: "
        "OTEL_TRACES_SAMPLER=always_off.",
        "",
        "| rows per message | before | off | on | unsampled | off / before | on / off | "
        "unsampled / off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in sizes:
        p = m[b]
        cells = [b]
        cells += [f"{p[c]['rows_per_s_median']:,}" if c in p else "-" for c in CONFIGS]
        for key in ("off/before", "on/off", "unsampled/off"):
            r = p["ratios"].get(key)
            cells.append(f"{r['median_ratio']} ({r['min']}-{r['max']})" if r else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Server CPU per message (µs, median; the server process's user + system time from a "
        "run's start to 1 s after its last answer, divided by its messages):",
        "",
        "| rows per message | before | off | on | unsampled | off / before | on / off | "
        "unsampled / off | on − off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in sizes:
        p = m[b]
        med = {c: p[c]["server_cpu_us_per_message_median"] for c in CONFIGS if c in p}
        cells = [b] + [f"{med[c]:,}" if c in med else "-" for c in CONFIGS]
        for key in ("off/before", "on/off", "unsampled/off"):
            r = p["cpu_ratios"].get(key)
            cells.append(f"{r['median_ratio']} ({r['min']}-{r['max']})" if r else "-")
        cells.append(f"+{med['on'] - med['off']:,.0f} µs" if "on" in med and "off" in med else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Ratios: of the medians, with the range of the same-repeat ratios in brackets (the "
        "noise: a range that spans 1.0 means no difference this run could resolve). "
        f"Spans the receiver got: {m['spans_exported']:,} in {m['export_requests']:,} export "
        "requests.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="'' to skip `before`")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--messages-1024", type=int, default=150)
    parser.add_argument("--messages-64", type=int, default=1500)
    parser.add_argument("--output", type=Path, default=RESULTS / "tracing_cost.json")
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]  # `off` and `before` must not trace
    started = time.perf_counter()
    sizes = {1024: args.messages_1024, 64: args.messages_64}
    sink = OtlpSink()
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="vae-tracing-") as tmp:
        work = Path(tmp)
        repo, rows = prepare(work, ["digits"])
        try:
            for config in CONFIGS:
                if config == "before" and not args.baseline:
                    continue
                src = (
                    unpack_revision(args.baseline, work / "baseline")
                    if config == "before"
                    else None
                )
                servers[config] = ServerProcess(
                    repo,
                    pythonpath=src,
                    env=server_env(config, sink.port),
                    log_file=work / f"{config}.log",
                )
            measured = measure(servers, sink, rows["digits"], sizes, args.repeats)
        finally:
            for s in servers.values():
                s.stop()
            sink.stop()
    results = results_record(
        "tracing_cost",
        machine_description(),
        {
            "baseline": args.baseline,
            "repeats": args.repeats,
            "opentelemetry_sdk": metadata.version("opentelemetry-sdk"),
            "measured": measured,
        },
        round(time.perf_counter() - started, 1),
    )
    write_results(args.output, results)
    md = markdown(results)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
