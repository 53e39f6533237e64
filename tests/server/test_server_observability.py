"""Prometheus metrics count exactly what was sent; JSON logs carry request ids; the model load
report; --print-config; every setting documented in the README."""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import local_settings
from tests.server.helpers import ServerProcess, arr, run_cli, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.inference import grpc_service_pb2_grpc as kpb_grpc
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import start_server
from vaeserve.server.call_context import begin_call
from vaeserve.server.logs import JsonFormatter, RequestIdFilter
from vaeserve.server.settings import ENV_PREFIX, SECRETS, field_types

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, d)).astype(np.float32)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics page as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_page_counts_what_was_sent(model_repo: Path) -> None:
    port = free_port()
    with start_server(local_settings(model_repo, metrics_port=port)) as server:
        assert server.metrics_port == port
        channel, stub = stub_for(server.port)
        for i in range(3):
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(5, seed=i))))
        for rows, code in ((_rows(4, d=63), "INVALID_ARGUMENT"), (_rows(5000), "RESOURCE")):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(rows)))
            assert exc.value.code().name.startswith(code)
        batches = [
            vae_pb2.ScoreRequest(batch_id="a", rows=to_tensor(_rows(10, seed=7))),
            vae_pb2.ScoreRequest(batch_id="b", rows=to_tensor(_rows(2, d=63))),
            vae_pb2.ScoreRequest(batch_id="c", rows=to_tensor(_rows(7, seed=8))),
        ]
        answers = list(stub.Score(iter(batches)))
        assert [a.HasField("error") for a in answers] == [False, True, False]
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        x = _rows(4, seed=9)
        req = kpb.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
        req.inputs.add(name="x", datatype="FP32", shape=[4, 64])
        resp = kstub.ModelInfer(req)
        flagged = sum(int(arr(a.is_anomaly).sum()) for a in answers if not a.HasField("error"))
        flagged += int(np.frombuffer(resp.raw_output_contents[5], np.bool_).sum())
        channel.close()

        page = scrape(port)
        req_total, rows_total = "vaeserve_requests_total", "vaeserve_rows_total"
        assert metric(page, req_total, rpc="Encode", model="digits", code="OK") == 3
        assert metric(page, rows_total, rpc="Encode", model="digits", code="OK") == 15
        assert metric(page, req_total, rpc="Encode", model="digits", code="INVALID_ARGUMENT") == 1
        # rejected requests add no rows, whatever they declared (rows count validated rows)
        assert metric(page, rows_total, rpc="Encode", model="digits", code="INVALID_ARGUMENT") == 0
        bad = {"rpc": "Encode", "model": "digits", "code": "RESOURCE_EXHAUSTED"}
        assert metric(page, req_total, **bad) == 1 and metric(page, rows_total, **bad) == 0
        assert metric(page, req_total, rpc="Score", model="digits", code="OK") == 2
        assert metric(page, rows_total, rpc="Score", model="digits", code="OK") == 17
        assert metric(page, req_total, rpc="Score", model="digits", code="INVALID_ARGUMENT") == 1
        assert metric(page, "vaeserve_streams_total", rpc="Score", code="OK") == 1
        assert metric(page, "vaeserve_streams_open", rpc="Score") == 0
        assert metric(page, req_total, rpc="ModelInfer", model="digits", code="OK") == 1
        assert metric(page, rows_total, rpc="ModelInfer", model="digits", code="OK") == 4
        assert metric(page, "vaeserve_request_duration_seconds_count", rpc="Encode") == 5
        assert metric(page, "vaeserve_request_duration_seconds_count", rpc="Score") == 3
        assert metric(page, "vaeserve_scored_rows_total", model="digits") == 21
        assert metric(page, "vaeserve_anomalies_total", model="digits", score="neg_elbo") == flagged
        assert metric(page, "vaeserve_limit_rejections_total", limit="max_request_rows") == 1
        enc = {"model": "digits", "graph": "encoder"}
        sc = {"model": "digits", "graph": "scorer"}
        assert metric(page, "vaeserve_batch_rows_sum", **enc) == 15
        assert metric(page, "vaeserve_batch_rows_count", **enc) == 3  # one call at a time
        assert metric(page, "vaeserve_batch_rows_sum", **sc) == 21
        assert metric(page, "vaeserve_batch_requests_sum", **sc) == 3
        assert metric(page, "vaeserve_queue_wait_seconds_count", **enc) == 3
        assert metric(page, "vaeserve_queue_wait_seconds_count", **sc) == 3
        assert metric(page, "vaeserve_inference_seconds_count", **enc) == 3
        provider = {"model": "digits", "version": "1", "device": "cpu"}
        for graph in ("encoder", "decoder", "scorer", "iw_scorer", "explainer"):
            assert (
                metric(
                    page,
                    "vaeserve_execution_provider",
                    graph=graph,
                    provider="CPUExecutionProvider",
                    **provider,
                )
                == 1
            )
        assert metric(page, "vaeserve_model_load_seconds", model="digits", version="1") > 0
        assert metric(page, "vaeserve_ready") == 1
    with pytest.raises(OSError):  # the endpoint is closed with the server
        scrape(port)


def test_metrics_port_in_use_is_a_start_error(model_repo: Path) -> None:
    from vaeserve.server import ServerStartError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_server(local_settings(model_repo, metrics_port=port))


def test_json_formatter_adds_request_id_and_fields() -> None:
    import contextvars
    import logging

    def emit() -> dict:
        record = logging.LogRecord(
            "vaeserve.x", logging.INFO, __file__, 1, "hi %s", ("there",), None
        )
        record.fields = {"rows": 3}
        RequestIdFilter().filter(record)
        return json.loads(JsonFormatter().format(record))

    out = emit()
    assert out["message"] == "hi there" and out["rows"] == 3 and "request_id" not in out

    def in_call() -> dict:
        begin_call("rid-1", "Encode")
        return emit()

    out = contextvars.copy_context().run(in_call)
    assert out["request_id"] == "rid-1" and out["level"] == "INFO" and out["logger"] == "vaeserve.x"


@pytest.mark.slow
def test_json_logs_request_ids_and_load_report(model_repo: Path) -> None:
    with ServerProcess(
        "--model-repo", str(model_repo), "--device", "cpu", "--log-format", "json",
        "--poll-interval-s", "0",
    ) as proc:  # fmt: skip
        channel, stub = stub_for(proc.port)
        _, call = stub.Encode.with_call(
            vae_pb2.EncodeRequest(rows=to_tensor(_rows(3))),
            metadata=(("x-request-id", "trace-abc-123"),),
        )
        assert ("x-request-id", "trace-abc-123") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(2, d=5))))
        (generated,) = [v for k, v in exc.value.trailing_metadata() if k == "x-request-id"]
        list(stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(_rows(4)))])))
        channel.close()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    lines = [line for line in proc.stderr_lines if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "vaeserve.access"]
    (ok,) = [r for r in access if r.get("request_id") == "trace-abc-123"]
    assert (ok["rpc"], ok["code"], ok["model"], ok["rows"]) == ("Encode", "OK", "digits", 3)
    (bad,) = [r for r in access if r.get("request_id") == generated]
    assert (bad["code"], bad["rows"]) == ("INVALID_ARGUMENT", 0)  # no validated rows
    (stream,) = [r for r in access if r["rpc"] == "Score"]
    assert (stream["messages"], stream["rows"], stream["message_errors"]) == (1, 4, 0)
    assert len(stream["request_id"]) == 32
    (report,) = [r for r in records if r.get("event") == "load_report"]
    (model,) = report["models"]
    assert (model["model"], model["version"], model["device"]) == ("digits", 1, "cpu")
    assert set(model["graphs"]) == {"encoder", "decoder", "scorer", "iw_scorer", "explainer"}
    assert model["graphs"]["scorer"]["providers"] == ["CPUExecutionProvider"]
    assert model["graphs"]["explainer"]["providers"] == ["CPUExecutionProvider"]
    assert (model["explain"], model["drift_window_rows"]) == (True, 1024)
    assert model["warmup_s"] >= 0 and model["load_s"] >= model["warmup_s"]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_print_config_redacts_secrets(model_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[server]\nmax_streams = 7\n")
    result = run_cli(
        "--model-repo", str(model_repo), "--port", "7000", "--config", str(config),
        "--print-config",
        env={"VAESERVE_TOKENS": "supersecret-1,supersecret-2", "VAESERVE_METRICS_PORT": "9100"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "supersecret" not in out and 'tokens = "<redacted>"' in out
    assert re.search(r"^port = 7000 +# flag$", out, re.M)
    assert re.search(r"^metrics_port = 9100 +# env VAESERVE_METRICS_PORT$", out, re.M)
    assert re.search(r"^max_streams = 7 +# config file .*server.toml$", out, re.M)
    assert re.search(r"^log_format = \"text\" +# default$", out, re.M)
    if tomllib is not None:
        parsed = tomllib.loads(out)["server"]
        assert parsed["port"] == 7000 and parsed["kserve"] is True
        assert set(parsed) | {"tls_cert", "tls_key", "tls_client_ca", "token_file"} == set(
            field_types()
        )
    bad = run_cli("--model-repo", str(model_repo), "--tokens", "x", "--print-config")
    assert bad.returncode == 2 and "No such option" in bad.stderr and "--tokens" in bad.stderr


def test_readme_documents_every_setting() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Serving", 1)[1].split("\n## ", 1)[0]
    for name in field_types():
        env = f"`{ENV_PREFIX}{name.upper()}`"
        flag = "—" if name in SECRETS else f"`--{name.replace('_', '-')}"
        row = next((line for line in section.splitlines() if f"| `{name}` |" in line), "")
        assert row and env in row and flag in row, f"README '## Serving' lacks a row for {name}"
