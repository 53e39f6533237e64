"""OpenTelemetry tracing on real servers: the span tree of unary calls and stream messages, the
batcher's wait and onnxruntime spans (linked across a merged call), the caller's traceparent
honoured and x-request-id kept; a server configured by OTEL_* variables exporting for real; and,
with tracing off or its extra missing, servers that serve as before. Spans are collected with
the SDK's InMemorySpanExporter (tests/traced.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tests.server.helpers import QueueStream, ServerProcess, ref, stub_for
from tests.traced import (
    PARENT_ID,
    TRACE_ID,
    TRACEPARENT,
    Spans,
    hex_span_id,
    hex_trace_id,
    traced_serving,
)
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.inference import grpc_service_pb2_grpc as kpb_grpc
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import VaeServer

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_NS = 1_000_000  # span clocks: time_ns and perf_counter, converted


def rows(n: int, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def traced(synth_repo: Path) -> Iterator[tuple[VaeServer, Spans]]:
    """A traced server on the synthetic models ("plain": 12 features)."""
    with traced_serving(synth_repo) as served:
        yield served


@pytest.fixture
def spans(traced: tuple[VaeServer, Spans]) -> Spans:
    traced[1].clear()
    return traced[1]


@pytest.fixture
def stub(traced: tuple[VaeServer, Spans]) -> Iterator:
    channel, stub = stub_for(traced[0].port)
    with channel:
        yield stub


def within(inner: ReadableSpan, outer: ReadableSpan) -> bool:
    """Whether `inner` lies inside `outer` in time (to the clocks' tolerance)."""
    return (
        inner.start_time >= outer.start_time - TOLERANCE_NS
        and inner.end_time <= outer.end_time + TOLERANCE_NS
    )


def linked_run(wait: ReadableSpan, spans: Spans) -> ReadableSpan:
    """The onnxruntime.run span a batcher.wait span links to."""
    assert len(wait.links) == 1
    run = spans.by_id(wait.links[0].context.span_id)
    assert run.name == "onnxruntime.run"
    return run


def test_unary_call_joins_the_callers_trace_with_wait_and_run_spans(spans, stub) -> None:
    request = vae_pb2.EncodeRequest(model=ref("plain"), rows=to_tensor(rows(5)))
    _, call = stub.Encode.with_call(
        request, metadata=[("traceparent", TRACEPARENT), ("x-request-id", "req-42")]
    )
    assert ("x-request-id", "req-42") in tuple(call.trailing_metadata())  # kept as it was
    (root,) = spans.wait_for("vae.v1.VaeService/Encode")
    assert root.kind == SpanKind.SERVER
    assert hex_trace_id(root) == TRACE_ID
    assert root.parent is not None and root.parent.is_remote
    assert hex_span_id(root.parent.span_id) == PARENT_ID
    assert dict(root.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "vae.v1.VaeService",
        "rpc.method": "Encode",
        "rpc.grpc.status_code": 0,
        "vaeserve.status": "OK",
        "vaeserve.request_id": "req-42",
        "vaeserve.model": "plain",
        "vaeserve.version": 1,
        "vaeserve.rows": 5,
    }
    assert root.status.status_code == StatusCode.UNSET
    children = {s.name: s for s in spans.children(root)}
    assert set(children) == {"batcher.wait", "onnxruntime.run"}
    wait, run = children["batcher.wait"], children["onnxruntime.run"]
    assert dict(run.attributes or {}) == {
        "vaeserve.model": "plain",
        "vaeserve.version": 1,
        "vaeserve.graph": "encoder",
        "vaeserve.device": "cpu",
        "vaeserve.rows": 5,
        "vaeserve.batch_requests": 1,
    }
    assert wait.attributes["vaeserve.graph"] == "encoder" and wait.attributes["vaeserve.rows"] == 5
    assert linked_run(wait, spans) == run
    assert not run.links  # nothing merged with it
    assert within(wait, root) and within(run, root)
    assert wait.end_time <= run.start_time + TOLERANCE_NS  # queued, then run


def test_score_stream_has_a_span_per_message_with_its_status(spans, stub) -> None:
    messages = [
        vae_pb2.ScoreRequest(model=ref("plain"), batch_id="a", rows=to_tensor(rows(6))),
        vae_pb2.ScoreRequest(batch_id="bad", rows=to_tensor(rows(4, d=11))),
        vae_pb2.ScoreRequest(batch_id="c", rows=to_tensor(rows(3, seed=1))),
    ]
    answers = list(stub.Score(iter(messages), metadata=[("traceparent", TRACEPARENT)]))
    assert [a.HasField("error") for a in answers] == [False, True, False]
    (root,) = spans.wait_for("vae.v1.VaeService/Score")
    assert hex_trace_id(root) == TRACE_ID and hex_span_id(root.parent.span_id) == PARENT_ID
    attrs = dict(root.attributes or {})
    assert attrs["rpc.method"] == "Score" and attrs["rpc.grpc.status_code"] == 0
    assert attrs["vaeserve.messages"] == 3 and attrs["vaeserve.message_errors"] == 1
    assert attrs["vaeserve.rows"] == 9
    assert (attrs["vaeserve.model"], attrs["vaeserve.version"]) == ("plain", 1)
    parts = sorted(spans.children(root), key=lambda s: s.attributes["vaeserve.message"])
    assert [s.name for s in parts] == ["Score message"] * 3
    assert [s.attributes["vaeserve.message"] for s in parts] == [0, 1, 2]
    assert [s.attributes["vaeserve.status"] for s in parts] == ["OK", "INVALID_ARGUMENT", "OK"]
    assert [s.attributes["rpc.grpc.status_code"] for s in parts] == [0, 3, 0]
    assert [s.attributes["vaeserve.rows"] for s in parts] == [6, 0, 3]
    for s in parts:  # the model the stream pinned, on every message
        assert (s.attributes["vaeserve.model"], s.attributes["vaeserve.version"]) == ("plain", 1)
        assert s.status.status_code == StatusCode.UNSET  # a client's mistake is no server fault
        assert within(s, root)
    assert spans.children(parts[1]) == []  # refused before any graph call
    for message in (parts[0], parts[2]):
        (wait,) = [s for s in spans.children(message) if s.name == "batcher.wait"]
        assert wait.attributes["vaeserve.graph"] == "scorer"
        run = linked_run(wait, spans)
        # run in place under this message, or merged into a call under another and linked
        linked = {link.context.span_id for link in run.links}
        assert run.parent.span_id == message.context.span_id or message.context.span_id in linked


def test_merged_call_is_under_one_request_and_linked_from_the_others(synth_repo: Path) -> None:
    with traced_serving(synth_repo, max_queue_delay_ms=800.0) as (server, spans):
        trace_ids = ["1" * 32, "2" * 32]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def encode(trace_id: str) -> None:
            channel, stub = stub_for(server.port)
            with channel:
                barrier.wait()
                try:
                    stub.Encode(
                        vae_pb2.EncodeRequest(model=ref("plain"), rows=to_tensor(rows(3))),
                        metadata=[("traceparent", f"00-{trace_id}-{PARENT_ID}-01")],
                    )
                except grpc.RpcError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=encode, args=(t,)) for t in trace_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        roots = {hex_trace_id(s): s for s in spans.wait_for("vae.v1.VaeService/Encode", 2)}
        assert set(roots) == set(trace_ids)  # two calls, each in its caller's trace
        (run,) = spans.named("onnxruntime.run")  # one merged graph call served both
        assert run.attributes["vaeserve.batch_requests"] == 2
        assert run.attributes["vaeserve.rows"] == 6
        owner = roots[hex_trace_id(run)]
        other = next(s for s in roots.values() if s is not owner)
        assert run.parent.span_id == owner.context.span_id
        assert [link.context.span_id for link in run.links] == [other.context.span_id]
        waits = spans.named("batcher.wait")
        assert {hex_trace_id(w) for w in waits} == set(trace_ids)
        for wait in waits:  # each trace leads to the call that served it
            assert wait.parent.span_id == roots[hex_trace_id(wait)].context.span_id
            assert linked_run(wait, spans) == run


def test_model_stream_infer_messages_and_unary_errors(spans, traced) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{traced[0].port}")
    with channel:
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)

        def infer(model: str) -> kpb.ModelInferRequest:
            x = rows(2)
            return kpb.ModelInferRequest(
                model_name=model,
                id=model,
                inputs=[
                    kpb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
                ],
                raw_input_contents=[x.tobytes()],
            )

        answers = list(kserve.ModelStreamInfer(iter([infer("plain"), infer("nope")])))
        assert [bool(a.error_message) for a in answers] == [False, True]
        with pytest.raises(grpc.RpcError) as err:
            kserve.ModelInfer(infer("nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    (stream,) = spans.wait_for("inference.GRPCInferenceService/ModelStreamInfer")
    parts = sorted(spans.children(stream), key=lambda s: s.attributes["vaeserve.message"])
    assert [s.name for s in parts] == ["ModelStreamInfer message"] * 2
    assert [s.attributes["vaeserve.status"] for s in parts] == ["OK", "NOT_FOUND"]
    assert (parts[0].attributes["vaeserve.model"], parts[0].attributes["vaeserve.version"]) == (
        "plain",
        1,
    )
    assert "vaeserve.version" not in parts[1].attributes  # no such model: no version
    (unary,) = spans.wait_for("inference.GRPCInferenceService/ModelInfer")
    assert unary.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert unary.status.status_code == StatusCode.UNSET
    assert spans.children(unary) == []


def test_a_cancelled_stream_ends_its_spans_cleanly(spans, stub, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="opentelemetry")
    requests = QueueStream()
    call = stub.Score(iter(requests))
    requests.put(vae_pb2.ScoreRequest(model=ref("plain"), batch_id="a", rows=to_tensor(rows(4))))
    assert next(call).batch_id == "a"
    call.cancel()
    (root,) = spans.wait_for("vae.v1.VaeService/Score")
    # a cancel that lands while the server reads can end its requests as a half-close would
    assert root.attributes["vaeserve.status"] in ("CANCELLED", "OK")
    assert [s.attributes["vaeserve.status"] for s in spans.children(root)] == ["OK"]
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]  # no detach errors


# A server in a fresh interpreter: started in-process with the environment given, called with
# a traceparent, then asked which OpenTelemetry modules it loaded.
_PROBE = """
import json, logging, sys
if sys.argv[2] == "missing":
    sys.modules["opentelemetry"] = None  # the tracing extra is not installed
import numpy as np
from vaeserve.client import VaeClient
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server import ServerSettings, start_server
from vaeserve.server.logs import configure_logging
import grpc
configure_logging("INFO")
logging.getLogger("vaeserve.access").setLevel(logging.WARNING)
settings = ServerSettings(model_repo=sys.argv[1], host="127.0.0.1", port=0, device="cpu",
                          intra_op_threads=1, poll_interval_s=0)
x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
with start_server(settings) as server:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = vae_pb2_grpc.VaeServiceStub(channel)
    md = [("traceparent", "00-TRACE_ID-PARENT_ID-01"), ("x-request-id", "probe-1")]
    _, call = stub.Encode.with_call(
        vae_pb2.EncodeRequest(model=vae_pb2.ModelRef(name="plain"), rows=to_tensor(x)), metadata=md)
    stream = [vae_pb2.ScoreRequest(model=vae_pb2.ModelRef(name="plain"), rows=to_tensor(x)),
              vae_pb2.ScoreRequest(rows=to_tensor(x[:, :11]))]
    answered = [a.HasField("error") for a in stub.Score(iter(stream), metadata=md)]
    with VaeClient(f"127.0.0.1:{server.port}") as client:
        scored = [len(r.kl) for r in client.score([x, x[:3]], model="plain")]
    channel.close()
print(json.dumps({
    "request_id": dict(call.trailing_metadata()).get("x-request-id"),
    "stream_errors": answered,
    "scored": scored,
    "otel_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.")),
    "spans_module": "vaeserve.server.spans" in sys.modules,
}))
""".replace("TRACE_ID", TRACE_ID).replace("PARENT_ID", PARENT_ID)


def _probe(repo: Path, mode: str, **env: str) -> tuple[dict, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(repo), mode],
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return json.loads(result.stdout.strip().splitlines()[-1]), lines


@pytest.mark.slow
def test_tracing_off_makes_no_spans_and_loads_no_opentelemetry(synth_repo: Path) -> None:
    facts, log_lines = _probe(synth_repo, "off")
    assert facts["request_id"] == "probe-1"
    assert facts["stream_errors"] == [False, True] and facts["scored"] == [5, 3]
    assert facts["otel_modules"] == [] and not facts["spans_module"]
    assert not [line for line in log_lines if "tracing" in line.lower()]


@pytest.mark.slow
def test_a_server_without_the_extra_serves_and_says_so_once(synth_repo: Path) -> None:
    facts, log_lines = _probe(
        synth_repo,
        "missing",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    assert facts["request_id"] == "probe-1"
    assert facts["stream_errors"] == [False, True] and facts["scored"] == [5, 3]
    said = [line for line in log_lines if "tracing" in line.lower()]
    assert len(said) == 1, log_lines
    assert "not installed" in said[0] and "pip install 'vaeserve[tracing]'" in said[0]


def _json_objects(text: str) -> list[dict]:
    """The JSON objects in `text` (the console exporter writes indented ones, one after another)."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(obj)
        i = end
    return out


@pytest.mark.slow
def test_vae_server_configured_by_otel_variables_exports_and_logs_trace_ids(
    synth_repo: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="50")
    with ServerProcess(
        "--model-repo", str(synth_repo), "--device", "cpu", "--poll-interval-s", "0",
        "--log-format", "json", env=env,
    ) as server:  # fmt: skip
        channel, stub = stub_for(server.port)
        with channel:
            stub.Encode(
                vae_pb2.EncodeRequest(model=ref("plain"), rows=to_tensor(rows(2))),
                metadata=[("traceparent", TRACEPARENT), ("x-request-id", "env-1")],
            )
        server.terminate()
        assert server.wait(30) == 0
    spans = [o for o in _json_objects("".join(server.lines)) if "context" in o]
    (root,) = [s for s in spans if s["name"] == "vae.v1.VaeService/Encode"]
    assert root["context"]["trace_id"] == f"0x{TRACE_ID}" and root["parent_id"] == f"0x{PARENT_ID}"
    assert root["resource"]["attributes"]["service.name"] == "vae-server"
    assert root["attributes"]["vaeserve.request_id"] == "env-1"
    assert {s["name"] for s in spans} >= {"batcher.wait", "onnxruntime.run"}
    logs = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    (access,) = [
        r for r in logs if r.get("logger") == "vaeserve.access" and r.get("rpc") == "Encode"
    ]
    assert access["request_id"] == "env-1" and access["trace_id"] == TRACE_ID
