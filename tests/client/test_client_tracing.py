"""The client carries the caller's trace to the server: VaeClient's unary calls and Score
stream send the current context (W3C traceparent), with CLIENT spans when an SDK is set up;
`vae-client` sets one up from the OTEL_* variables. Against a real traced server whose spans go
to the SDK's InMemorySpanExporter (tests/traced.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from tests.client.conftest import VENV_BIN
from tests.server.synth import write_synthetic_model
from tests.traced import Spans, hex_span_id, hex_trace_id, traced_serving
from vaeserve.client import VaeClient, VaeClientError
from vaeserve.client import tracing as client_tracing
from vaeserve.server import VaeServer


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaeServer, Spans]]:
    """A traced server holding the synthetic model "plain" (12 features)."""
    repo = tmp_path_factory.mktemp("traced_repo")
    write_synthetic_model(repo, "plain", 1, input_dim=12, latent_dim=3, seed=1)
    with traced_serving(repo) as served:
        yield served


@pytest.fixture
def spans(traced: tuple[VaeServer, Spans]) -> Spans:
    traced[1].clear()
    return traced[1]


@pytest.fixture
def client(traced: tuple[VaeServer, Spans]) -> Iterator[VaeClient]:
    with VaeClient(f"127.0.0.1:{traced[0].port}", retries=0) as c:
        yield c


@pytest.fixture
def client_spans(spans: Spans) -> Iterator[Spans]:
    """The client's own spans go to the test's provider too (as `tracer_provider=` would)."""
    client_tracing.use_tracer_provider(spans.provider)
    try:
        yield spans
    finally:
        client_tracing.use_tracer_provider(None)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 12)).astype(np.float32)


def test_calls_and_streams_join_the_callers_trace(spans: Spans, client: VaeClient) -> None:
    job = spans.provider.get_tracer("test").start_span("job")
    with trace.use_span(job, end_on_exit=True):
        client.encode(rows(3), model="plain")
        results = list(client.score([rows(4), rows(2, seed=1)], model="plain"))
    assert [len(r.kl) for r in results] == [4, 2]
    (encode,) = spans.wait_for("vae.v1.VaeService/Encode")
    (score,) = spans.wait_for("vae.v1.VaeService/Score")
    for server_span in (encode, score):  # no client SDK: the server's parent is the job itself
        assert hex_trace_id(server_span) == hex_trace_id(job)
        assert server_span.parent.span_id == job.context.span_id
    assert score.attributes["vaeserve.messages"] == 2
    assert not [s for s in spans.all() if s.kind == SpanKind.CLIENT]


def test_without_a_current_span_calls_start_their_own_traces(
    spans: Spans, client: VaeClient
) -> None:
    client.encode(rows(1), model="plain")
    (encode,) = spans.wait_for("vae.v1.VaeService/Encode")
    assert encode.parent is None


def test_client_spans_sit_between_the_caller_and_the_server(
    client_spans: Spans, client: VaeClient
) -> None:
    spans = client_spans
    job = spans.provider.get_tracer("test").start_span("job")
    with trace.use_span(job, end_on_exit=True):
        client.encode(rows(3), model="plain")
        list(client.score([rows(4)], model="plain"))
        with pytest.raises(VaeClientError):
            client.encode(rows(3), model="nope")
    calls = [s for s in spans.all() if s.kind == SpanKind.CLIENT]
    assert sorted(s.name for s in calls) == [
        "vae.v1.VaeService/Encode",
        "vae.v1.VaeService/Encode",
        "vae.v1.VaeService/Score",
    ]
    servers = spans.wait_for("vae.v1.VaeService/Encode", 4)  # two CLIENT, two SERVER
    servers = [s for s in servers if s.kind == SpanKind.SERVER]
    servers += [
        s for s in spans.wait_for("vae.v1.VaeService/Score", 2) if s.kind == SpanKind.SERVER
    ]
    by_id = {c.context.span_id: c for c in calls}
    for server_span in servers:
        call = by_id[server_span.parent.span_id]  # each server span under its client span
        assert call.name == server_span.name and call.parent.span_id == job.context.span_id
        code = call.attributes["rpc.grpc.status_code"]
        assert code == server_span.attributes["rpc.grpc.status_code"]
        assert (call.status.status_code == StatusCode.ERROR) == (code != 0)
    assert sorted(c.attributes["rpc.grpc.status_code"] for c in calls) == [0, 0, 5]  # NOT_FOUND


def _json_objects(text: str) -> list[dict]:
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
def test_vae_client_traces_from_otel_variables(spans: Spans, traced, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VAECLIENT_"))}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="50")
    target = f"127.0.0.1:{traced[0].port}"
    result = subprocess.run(
        [str(VENV_BIN / "vae-client"), "info", "--model", "plain", "--json", "--server", target],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (call,) = [o for o in _json_objects(result.stdout) if o.get("kind") == "SpanKind.CLIENT"]
    assert call["name"] == "vae.v1.VaeService/ModelInfo"
    assert call["resource"]["attributes"]["service.name"] == "vae-client"
    (served,) = spans.wait_for("vae.v1.VaeService/ModelInfo")
    assert f"0x{hex_trace_id(served)}" == call["context"]["trace_id"]
    assert f"0x{hex_span_id(served.parent.span_id)}" == call["context"]["span_id"]


@pytest.mark.slow
def test_vae_client_without_the_extra_works_and_says_so_once(traced) -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None; "
        "from vaeserve.client.cli import main; sys.argv[0] = 'vae-client'; main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VAECLIENT_"))}
    env.update(OTEL_TRACES_EXPORTER="otlp")
    target = f"127.0.0.1:{traced[0].port}"
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script, "health", "--server", target],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0 and "SERVING" in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'vaeserve[tracing]'" in lines[0], lines
