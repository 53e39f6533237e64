"""KServe v2 over our own generated stubs: encodings, parameters, errors, streams, limits."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.kserve.conftest import digits_rows, kserve_stub_for
from tests.server.conftest import local_settings
from tests.server.helpers import TOL, QueueStream, arr, ref, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.inference import grpc_service_pb2 as pb
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import start_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Input = pb.ModelInferRequest.InferInputTensor


def raw_request(model: str, version: str = "", **inputs: np.ndarray) -> pb.ModelInferRequest:
    """A request with every input as raw little-endian bytes."""
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, a in inputs.items():
        req.inputs.append(Input(name=name, datatype=_dt(a), shape=list(a.shape)))
        req.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
    return req


def typed_request(model: str, **inputs: np.ndarray) -> pb.ModelInferRequest:
    """A request with every input as typed contents (fp32_contents, fp64_contents...)."""
    req = pb.ModelInferRequest(model_name=model)
    for name, a in inputs.items():
        t = Input(name=name, datatype=_dt(a), shape=list(a.shape))
        field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}
        getattr(t.contents, field[_dt(a)]).extend(a.ravel().tolist())
        req.inputs.append(t)
    return req


def _dt(a: np.ndarray) -> str:
    return {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64"}[a.dtype.name]


def outputs(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output as an array, from raw_output_contents or typed contents."""
    dtypes = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}
    fields = {"FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents"}
    out = {}
    for i, o in enumerate(resp.outputs):
        if resp.raw_output_contents:
            a = np.frombuffer(resp.raw_output_contents[i], dtype=dtypes[o.datatype])
        else:
            a = np.asarray(getattr(o.contents, fields[o.datatype]), dtype=dtypes[o.datatype])
        out[o.name] = a.reshape(list(o.shape))
    return out


def _error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)
    return exc.value


def _score(vae_stub, x: np.ndarray, **kw: object) -> vae_pb2.ScoreResponse:
    req = vae_pb2.ScoreRequest(model=ref("digits"), rows=to_tensor(x), **kw)  # type: ignore[arg-type]
    (resp,) = vae_stub.Score(iter([req]))
    return resp


def test_raw_and_typed_contents_give_the_same_scores(kserve_stub, vae_stub) -> None:
    x = digits_rows(9)
    raw = kserve_stub.ModelInfer(raw_request("digits", x=x))
    typed = kserve_stub.ModelInfer(typed_request("digits", x=x.astype(np.float64)))
    assert raw.raw_output_contents and not typed.raw_output_contents
    assert typed.outputs[0].contents.fp32_contents  # typed in, typed out
    want = _score(vae_stub, x, include_kl_per_dim=True)
    for resp in (raw, typed):
        out = outputs(resp)
        assert list(out) == ["kl", "kl_per_dim", "recon_nll", "neg_elbo", "p_value", "is_anomaly"]
        for name in ("kl", "kl_per_dim", "recon_nll", "neg_elbo"):
            np.testing.assert_allclose(out[name], arr(getattr(want, name)), **TOL)
        np.testing.assert_allclose(out["p_value"], arr(want.p_value), rtol=1e-6)
        assert out["is_anomaly"].tolist() == arr(want.is_anomaly).tolist()
        assert resp.parameters["score"].string_param == "neg_elbo"
        assert resp.parameters["threshold"].double_param == want.threshold
    # binary_data_output overrides the mirror
    req = typed_request("digits.encoder", x=x)
    req.parameters["binary_data_output"].bool_param = True
    assert kserve_stub.ModelInfer(req).raw_output_contents


def test_int64_rows_and_requested_outputs(kserve_stub, vae_stub) -> None:
    x = np.rint(digits_rows(5)).astype(np.int64)
    req = typed_request("digits", x=x)
    req.outputs.add(name="p_value")
    req.outputs.add(name="kl")
    resp = kserve_stub.ModelInfer(req)
    assert [o.name for o in resp.outputs] == ["p_value", "kl"]
    want = _score(vae_stub, x.astype(np.float32))
    np.testing.assert_allclose(outputs(resp)["kl"], arr(want.kl), **TOL)
    req.outputs.add(name="mu")
    err = _error(kserve_stub.ModelInfer, req)
    assert err.code() == INVALID and "has no output 'mu'" in err.details()
    req = raw_request("digits", x=digits_rows(2))
    req.outputs.add(name="iw_nll")
    err = _error(kserve_stub.ModelInfer, req)
    assert err.code() == INVALID and "iw_samples" in err.details()


def test_versions_and_names(kserve_stub) -> None:
    x = digits_rows(2)
    for name, version in (("digits", "1"), ("digits.scorer", ""), ("", "")):
        resp = kserve_stub.ModelInfer(raw_request(name, version, x=x))
        assert resp.model_version == "1"
        assert resp.model_name == (name or "digits")
    err = _error(kserve_stub.ModelInfer, raw_request("digits", "one", x=x))
    assert err.code() == INVALID and "not a version number" in err.details()
    err = _error(kserve_stub.ModelInfer, raw_request("digits", "2", x=x))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "loaded versions: 1" in err.details()
    err = _error(kserve_stub.ModelInfer, raw_request("digits.sampler", x=x))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "digits.encoder" in err.details()
    err = _error(kserve_stub.ModelReady, pb.ModelReadyRequest(name="digits", version="x"))
    assert err.code() == INVALID
    meta = kserve_stub.ModelMetadata(pb.ModelMetadataRequest(name="digits.encoder"))
    assert [(o.name, list(o.shape)) for o in meta.outputs] == [("mu", [-1, 8]), ("logvar", [-1, 8])]


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: r.inputs[0].shape.__setitem__(slice(None), [4, 63]),
         INVALID, "63 features per row but model 'digits' version 1 expects 64"),
        (lambda r: r.inputs[0].shape.__setitem__(slice(None), [256]),
         INVALID, "is not 2-D"),
        (lambda r: setattr(r.inputs[0], "datatype", "BYTES"),
         INVALID, "datatype 'BYTES' is not accepted"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12),
         INVALID, "12 bytes do not match shape [4, 64] of FP32 (1024 bytes expected)"),
        (lambda r: r.raw_input_contents.append(b""), INVALID, "raw_input_contents has 2 entries"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), INVALID, "one or the other"),
        (lambda r: setattr(r.inputs[0], "name", "rows"), INVALID, "has no input 'rows'"),
        (lambda r: r.inputs[0].shape.__setitem__(slice(None), [5000, 64]),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "(setting max_request_rows)"),
        (lambda r: r.parameters["score"].CopyFrom(pb.InferParameter(string_param="elbo")),
         INVALID, "score 'elbo' is not one of kl, recon_nll, neg_elbo"),
        (lambda r: r.parameters["iw_samples"].CopyFrom(pb.InferParameter(int64_param=10**6)),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "(setting max_iw_samples)"),
        (lambda r: r.parameters["threshold"].CopyFrom(pb.InferParameter(string_param="high")),
         INVALID, "'threshold' must be a number"),
    ],
)  # fmt: skip
def test_bad_requests(kserve_stub, mutate, code, message) -> None:
    req = raw_request("digits", x=digits_rows(4))
    mutate(req)
    err = _error(kserve_stub.ModelInfer, req)
    assert err.code() == code and message in err.details(), err.details()


def test_nan_rows_and_missing_rows(kserve_stub) -> None:
    x = digits_rows(6)
    x[[2, 4], 1] = np.nan
    err = _error(kserve_stub.ModelInfer, raw_request("digits", x=x))
    assert err.code() == INVALID and "2 of 6 rows hold NaN or inf (first at row index 2" in (
        err.details()
    )
    err = _error(kserve_stub.ModelInfer, pb.ModelInferRequest(model_name="digits"))
    assert err.code() == INVALID and "input 'x' is missing" in err.details()
    typed = typed_request("digits", x=digits_rows(2))
    typed.inputs[0].shape[:] = [3, 64]
    err = _error(kserve_stub.ModelInfer, typed)
    assert err.code() == INVALID and "holds 128 values but shape [3, 64] needs 192" in err.details()


def test_conditional_model(cond_server) -> None:
    channel, kstub = kserve_stub_for(cond_server.port)
    vchannel, vstub = stub_for(cond_server.port)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 8)).astype(np.float32)
    cond = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 7)]
    meta = kstub.ModelMetadata(pb.ModelMetadataRequest(name="cond"))
    assert [(i.name, list(i.shape)) for i in meta.inputs] == [("x", [-1, 8]), ("cond", [-1, 3])]
    resp = kstub.ModelInfer(raw_request("cond", x=x, cond=cond))
    (want,) = vstub.Score(
        iter([vae_pb2.ScoreRequest(rows=to_tensor(x), condition=to_tensor(cond))])
    )
    np.testing.assert_allclose(outputs(resp)["neg_elbo"], arr(want.neg_elbo), **TOL)
    enc = kstub.ModelInfer(raw_request("cond.encoder", x=x, cond=cond))
    dec = kstub.ModelInfer(raw_request("cond.decoder", z=outputs(enc)["mu"], cond=cond))
    rec = vstub.Reconstruct(
        vae_pb2.ReconstructRequest(rows=to_tensor(x), condition=to_tensor(cond))
    )
    np.testing.assert_allclose(outputs(dec)["x_hat"], arr(rec.rows), **TOL)
    err = _error(kstub.ModelInfer, raw_request("cond", x=x))
    assert err.code() == INVALID and "is conditional" in err.details()
    err = _error(kstub.ModelInfer, raw_request("cond", x=x, cond=cond[:3]))
    assert err.code() == INVALID and "condition has 3 rows but there are 7 rows" in err.details()
    channel.close()
    vchannel.close()


def test_stream_in_band_errors_keep_the_stream_open(kserve_stub, vae_stub) -> None:
    x = digits_rows(12)
    feed = QueueStream()
    call = kserve_stub.ModelStreamInfer(iter(feed))
    first = raw_request("digits", x=x)
    first.id = "a"
    feed.put(first)
    got = next(call)
    assert got.error_message == "" and got.infer_response.id == "a"
    bad = raw_request("digits", x=x[:, :10])
    bad.id = "b"
    feed.put(bad)
    got = next(call)
    assert got.error_message.startswith("INVALID_ARGUMENT: ") and got.infer_response.id == "b"
    last = raw_request("digits.encoder", x=x)
    last.id = "c"
    feed.put(last)
    got = next(call)
    assert got.error_message == "" and got.infer_response.model_name == "digits.encoder"
    feed.close()
    assert list(call) == []


def test_stream_inflight_row_limit_is_in_band(model_repo: Path) -> None:
    with start_server(local_settings(model_repo, max_stream_inflight_rows=10)) as server:
        channel, stub = kserve_stub_for(server.port)
        reqs = [raw_request("digits", x=digits_rows(16)), raw_request("digits", x=digits_rows(8))]
        big, small = stub.ModelStreamInfer(iter(reqs))
        assert big.error_message.startswith("RESOURCE_EXHAUSTED: ")
        assert "(setting max_stream_inflight_rows)" in big.error_message
        assert small.error_message == "" and len(small.infer_response.outputs) == 6
        channel.close()


def test_request_id_metadata_is_echoed(kserve_stub) -> None:
    _, call = kserve_stub.ModelInfer.with_call(
        raw_request("digits", x=digits_rows(1)), metadata=(("x-request-id", "req-42"),)
    )
    assert ("x-request-id", "req-42") in call.trailing_metadata()
    err = _error(kserve_stub.ModelInfer, raw_request("nope", x=digits_rows(1)))
    ids = [v for k, v in err.trailing_metadata() if k == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 32  # generated when the client sends none


def test_server_and_model_readiness(kserve_server, kserve_stub) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{kserve_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    assert kserve_stub.ServerLive(pb.ServerLiveRequest()).live
    assert kserve_stub.ServerReady(pb.ServerReadyRequest()).ready
    assert kserve_stub.ModelReady(pb.ModelReadyRequest(name="digits.decoder")).ready
    assert not kserve_stub.ModelReady(pb.ModelReadyRequest(name="other")).ready
    meta = kserve_stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "vaeserve" and "parameters" in meta.extensions
