"""What a hostile or careless client found, each answered cleanly: non-ASCII versions, row ids
past int64, undecodable bytes, huge echoed names, messages over the size limit, inflated row
counts, server paths, health with no model, and importance sampling in bounded slices."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.kserve.conftest import kserve_stub_for
from tests.server.conftest import local_settings
from tests.server.helpers import arr, ref, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import VaeServer, start_server
from vaeserve.server.dataplane import draw_normal, iw_rows_per_call

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _rows(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, d)).astype(np.float32)


def _infer_request(name: str = "digits", version: str = "", n: int = 2) -> kpb.ModelInferRequest:
    req = kpb.ModelInferRequest(model_name=name, model_version=version, id="r1")
    req.inputs.add(name="x", datatype="FP32", shape=[n, 64])
    req.raw_input_contents.append(_rows(n).tobytes())
    return req


def _metrics(server: VaeServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(server.metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _metric(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def _sum(page: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in page.items() if n == name and want <= set(lab))


# ---- 2. KServe model_version: ASCII digits only -----------------------------------------
@pytest.mark.parametrize("version", ["²", "١", "1a", " 1", "-1", "+1", "1.0", "9" * 19])
def test_kserve_version_must_be_ascii_digits(digits_server: VaeServer, version: str) -> None:
    channel, stub = kserve_stub_for(digits_server.port)
    calls = {
        "ModelInfer": lambda: stub.ModelInfer(_infer_request(version=version)),
        "ModelMetadata": lambda: stub.ModelMetadata(
            kpb.ModelMetadataRequest(name="digits", version=version)
        ),
        "ModelReady": lambda: stub.ModelReady(
            kpb.ModelReadyRequest(name="digits", version=version)
        ),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == INVALID, (rpc, exc.value.details())
        assert "ASCII digits" in exc.value.details()
    (answer,) = list(stub.ModelStreamInfer(iter([_infer_request(version=version)])))
    assert answer.error_message.startswith("INVALID_ARGUMENT: model_version")
    ok = stub.ModelInfer(_infer_request(version="1"))
    assert ok.model_version == "1"
    channel.close()


# ---- 3. start_offset near 2**63 ----------------------------------------------------------
def test_start_offset_past_int64_is_invalid_in_band(digits_stub) -> None:
    top = 2**63 - 1
    reqs = [
        vae_pb2.ScoreRequest(batch_id="over", rows=to_tensor(_rows(5)), start_offset=top - 3),
        vae_pb2.ScoreRequest(batch_id="edge", rows=to_tensor(_rows(5)), start_offset=top - 4),
        vae_pb2.ScoreRequest(batch_id="low", rows=to_tensor(_rows(2)), start_offset=-(2**63)),
    ]
    over, edge, low = list(digits_stub.Score(iter(reqs)))
    assert over.error.code == INVALID.value[0] and "start_offset" in over.error.message
    assert not edge.HasField("error") and arr(edge.row_ids)[-1] == top
    assert not low.HasField("error") and list(arr(low.row_ids)) == [-(2**63), -(2**63) + 1]


# ---- 4. undecodable bytes ----------------------------------------------------------------
def test_undecodable_bytes_are_invalid_argument_with_one_log_line(
    digits_server: VaeServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{digits_server.port}")
    encode = channel.unary_unary("/vae.v1.VaeService/Encode")
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as exc:
        encode(b"\xff\xff", timeout=10)
    assert exc.value.code() == INVALID
    assert "vae.v1.EncodeRequest" in exc.value.details()
    assert "Error" not in exc.value.details() and "<class" not in exc.value.details()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None, warnings
    assert "undecodable" in warnings[0].getMessage()

    # in a stream, the messages before the bad one are answered, then the call ends
    score = channel.stream_stream("/vae.v1.VaeService/Score")
    good = vae_pb2.ScoreRequest(batch_id="a", rows=to_tensor(_rows(3))).SerializeToString()
    call = score(iter([good, b"\x0a\xff\xff\xff"]), timeout=10)
    first = vae_pb2.ScoreResponse.FromString(next(call))
    assert first.batch_id == "a" and not first.HasField("error")
    with pytest.raises(grpc.RpcError) as exc:
        next(call)
    assert exc.value.code() == INVALID and "vae.v1.ScoreRequest" in exc.value.details()
    channel.close()


# ---- 5. echoed values are shortened ------------------------------------------------------
def test_huge_model_name_is_not_found_with_a_short_message(digits_server: VaeServer) -> None:
    name = "m" * 20_000
    channel, stub = stub_for(digits_server.port)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Encode(vae_pb2.EncodeRequest(model=ref(name), rows=to_tensor(_rows(2))))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "(20000 characters)" in exc.value.details() and len(exc.value.details()) < 1100
    kchannel, kstub = kserve_stub_for(digits_server.port)
    for call in (
        lambda: kstub.ModelInfer(_infer_request(name=name)),
        lambda: kstub.ModelMetadata(kpb.ModelMetadataRequest(name=name)),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(exc.value.details()) < 1100
    req = _infer_request()
    req.inputs.add(name="q" * 30_000, datatype="FP32", shape=[2] * 5000)
    with pytest.raises(grpc.RpcError) as exc:
        kstub.ModelInfer(req)
    assert exc.value.code() == INVALID and len(exc.value.details()) < 1100
    channel.close()
    kchannel.close()


# ---- 6. message size, 7. row counts ------------------------------------------------------
def test_message_size_limit_is_named_logged_and_counted(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 64 * 1024
    settings = local_settings(model_repo, max_message_bytes=limit)
    with caplog.at_level(logging.INFO, logger="vaeserve.access"), start_server(settings) as server:
        channel, stub = stub_for(server.port)
        with pytest.raises(grpc.RpcError) as exc:  # a request over the limit
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(np.zeros((300, 64), np.float32))))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_bytes" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:  # a response over the limit
            stub.Sample(vae_pb2.SampleRequest(n=4096))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_bytes" in exc.value.details() and "response" in exc.value.details()
        stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(np.zeros((10, 64), np.float32))))
        channel.close()
        page = _metrics(server)
    access = [r.fields for r in caplog.records if r.name == "vaeserve.access"]
    codes = [(f["rpc"], f["code"]) for f in access]
    assert ("Encode", "RESOURCE_EXHAUSTED") in codes and ("Sample", "RESOURCE_EXHAUSTED") in codes
    assert ("Sample", "OK") not in codes
    assert _metric(page, "vaeserve_limit_rejections_total", limit="max_message_bytes") == 2
    assert _sum(page, "vaeserve_requests_total", rpc="Sample", code="RESOURCE_EXHAUSTED") == 1
    assert _sum(page, "vaeserve_requests_total", rpc="Sample", code="OK") == 0
    assert _sum(page, "vaeserve_requests_total", rpc="Encode", code="RESOURCE_EXHAUSTED") == 1


def test_rows_metric_counts_validated_rows_only(model_repo: Path) -> None:
    with start_server(local_settings(model_repo)) as server:
        channel, stub = stub_for(server.port)
        huge = vae_pb2.Tensor(dtype=vae_pb2.FLOAT32, shape=[2**62, 64])
        with pytest.raises(grpc.RpcError):
            stub.Encode(vae_pb2.EncodeRequest(rows=huge))
        answers = list(stub.Score(iter([vae_pb2.ScoreRequest(rows=huge)] * 2)))
        assert all(a.HasField("error") for a in answers)
        kchannel, kstub = kserve_stub_for(server.port)
        req = kpb.ModelInferRequest(model_name="digits")
        req.inputs.add(name="x", datatype="FP32", shape=[2**62, 64])
        with pytest.raises(grpc.RpcError):
            kstub.ModelInfer(req)
        list(kstub.ModelStreamInfer(iter([req])))
        stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(3))))
        channel.close()
        kchannel.close()
        page = _metrics(server)
    assert _sum(page, "vaeserve_rows_total") == 3


# ---- 8. no server paths ------------------------------------------------------------------
def test_clients_never_see_server_paths(tmp_path: Path, fresh_repo: Path) -> None:
    manifest_file = fresh_repo / "digits" / "1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["training"]["config"]["data"] = "/srv/private/events.parquet"
    manifest_file.write_text(json.dumps(manifest))
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    with start_server(local_settings(fresh_repo)) as server:
        channel, stub = stub_for(server.port)
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest(model=ref("digits")))
        sent = json.loads(info.manifest_json)["training"]["config"]
        assert sent["data"] == "events.parquet" and "run_dir" not in sent
        assert (
            "/srv/private" not in info.manifest_json and str(fresh_repo) not in info.manifest_json
        )
        channel.close()
    with start_server(local_settings(empty)) as server:
        channel, stub = stub_for(server.port)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1))))
        assert str(empty) not in exc.value.details() and "none" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(model=ref("x"), rows=to_tensor(_rows(1))))
        assert str(empty) not in exc.value.details()
        channel.close()


# ---- 9. health with no model -------------------------------------------------------------
def test_health_is_not_serving_while_no_model_is_loaded(tmp_path: Path, fresh_repo: Path) -> None:
    services = ("", "vae.v1.VaeService", "inference.GRPCInferenceService")
    with start_server(local_settings(fresh_repo)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        _, kstub = kserve_stub_for(server.port)

        def statuses() -> list[int]:
            return [health.Check(health_pb2.HealthCheckRequest(service=s)).status for s in services]

        assert statuses() == [SERVING] * 3
        assert kstub.ServerReady(kpb.ServerReadyRequest()).ready
        shutil.move(fresh_repo / "digits" / "1", tmp_path / "v1")
        server.rescan()
        assert statuses() == [NOT_SERVING] * 3
        assert not kstub.ServerReady(kpb.ServerReadyRequest()).ready
        shutil.move(tmp_path / "v1", fresh_repo / "digits" / "1")
        server.rescan()
        assert statuses() == [SERVING] * 3
        channel.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    with start_server(local_settings(empty)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == NOT_SERVING
        channel.close()


# ---- 1. importance sampling in slices ----------------------------------------------------
def test_importance_sampling_in_slices_matches_one_graph_call(
    digits_server: VaeServer, digits_stub, digits_ref
) -> None:
    model = digits_server.app.repository.get("digits")
    k, n = 256, 700
    step = iw_rows_per_call(model, k)
    assert step < n  # the request really is cut into several graph calls
    batcher = model.batchers["iw_scorer"]
    calls = batcher.stats.calls
    x = _rows(n, seed=3)
    (resp,) = list(
        digits_stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(x), iw_samples=k, seed=9)]))
    )
    assert batcher.stats.calls - calls == -(-n // step)
    want = digits_ref.run("iw_scorer", x=x, noise=draw_normal(9, (k, n, 8)))["iw_nll"]
    np.testing.assert_allclose(arr(resp.iw_nll), want, rtol=1e-5, atol=1e-4)


def test_draw_normal_in_slabs_is_one_stream() -> None:
    shape = (3, 700_001)
    whole = np.random.Generator(np.random.PCG64(4)).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(draw_normal(4, shape), whole)
