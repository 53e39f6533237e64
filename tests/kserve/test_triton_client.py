"""tritonclient.grpc (unchanged, in .venv-triton) against vaeserve: numbers equal vae.v1's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.kserve.conftest import Triton, digits_rows
from tests.server.certs import make_pki
from tests.server.conftest import local_settings
from tests.server.helpers import TOL, arr, ref
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import start_server


@pytest.fixture(scope="module")
def mixed_rows() -> np.ndarray:
    """30 real digits and 10 rows of uniform noise (the noise should be flagged)."""
    real = load_digits().data[:30].astype(np.float32)
    return np.concatenate([real, digits_rows(10, seed=5)])


def _x(triton: Triton, x: np.ndarray, datatype: str = "FP32", name: str = "x") -> list[dict]:
    return [{"name": name, "datatype": datatype, "npy": triton.npy(x)}]


def _out(result: dict, name: str) -> np.ndarray:
    o = result["outputs"][name]
    a = np.asarray(o["data"])
    assert list(a.shape) == o["shape"]
    return a


def _vae_score(vae_stub, x: np.ndarray, **kw: object) -> vae_pb2.ScoreResponse:
    req = vae_pb2.ScoreRequest(model=ref("digits"), rows=to_tensor(x), **kw)  # type: ignore[arg-type]
    (resp,) = vae_stub.Score(iter([req]))
    assert not resp.HasField("error"), resp.error.message
    return resp


def _assert_scores_match(result: dict, want: vae_pb2.ScoreResponse) -> None:
    for name in ("kl", "recon_nll", "neg_elbo"):
        np.testing.assert_allclose(_out(result, name), arr(getattr(want, name)), **TOL)
    if want.HasField("kl_per_dim"):
        np.testing.assert_allclose(_out(result, "kl_per_dim"), arr(want.kl_per_dim), **TOL)
    np.testing.assert_allclose(_out(result, "p_value"), arr(want.p_value), rtol=1e-6)
    assert _out(result, "is_anomaly").tolist() == arr(want.is_anomaly).tolist()


def test_health_and_metadata(triton: Triton, kserve_server) -> None:
    live, ready, meta, r1, r2, r3, r4, md, md_dec = triton.run(
        kserve_server.port,
        [
            {"op": "live"},
            {"op": "ready"},
            {"op": "server_metadata"},
            {"op": "model_ready", "model": "digits"},
            {"op": "model_ready", "model": "digits.encoder", "version": "1"},
            {"op": "model_ready", "model": "digits", "version": "9"},
            {"op": "model_ready", "model": "nope"},
            {"op": "model_metadata", "model": "digits"},
            {"op": "model_metadata", "model": "digits.decoder", "version": "1"},
        ],
    )
    assert live is True and ready is True
    assert meta["name"] == "vaeserve" and meta["version"]
    assert (r1, r2, r3, r4) == (True, True, False, False)
    assert md["name"] == "digits" and md["versions"] == ["1"]
    assert md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "64"]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in md["outputs"]}
    assert outputs["kl"] == ("FP32", ["-1"]) and outputs["kl_per_dim"] == ("FP32", ["-1", "8"])
    assert outputs["p_value"] == ("FP64", ["-1"]) and outputs["is_anomaly"] == ("BOOL", ["-1"])
    assert outputs["explain_index"] == ("INT64", ["-1", "-1"])  # [n, K]: K per request
    assert md_dec["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert md_dec["outputs"] == [{"name": "x_hat", "datatype": "FP32", "shape": ["-1", "64"]}]


def test_infer_matches_vae_v1(triton: Triton, kserve_server, vae_stub, mixed_rows) -> None:
    x = mixed_rows
    enc = vae_stub.Encode(vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(x)))
    mu = arr(enc.mu)
    dec = vae_stub.Decode(vae_pb2.DecodeRequest(model=ref("digits"), z=enc.mu))
    steps = [
        {"op": "infer", "model": "digits", "id": "score-1", "inputs": _x(triton, x)},
        {"op": "infer", "model": "digits.encoder", "version": "1", "inputs": _x(triton, x)},
        {"op": "infer", "model": "digits.decoder", "inputs": _x(triton, mu, name="z")},
        {"op": "infer", "model": "digits.encoder", "inputs": _x(triton, x, "FP64")},
        {
            "op": "infer",
            "model": "digits",
            "inputs": _x(triton, x),
            "outputs": ["kl", "is_anomaly"],
            "parameters": {"score": "kl", "threshold": 5.0},
        },
        {
            "op": "infer",
            "model": "digits",
            "inputs": _x(triton, x[:6]),
            "outputs": ["iw_nll"],
            "parameters": {"iw_samples": 16, "seed": 3},
        },
        {
            "op": "infer",
            "model": "digits",
            "inputs": _x(triton, x),
            "outputs": ["is_anomaly", "explain_index", "explain_nll"],
            "parameters": {"explain": 3},
        },
    ]
    score, encoded, decoded, enc64, flagged, iw, why = triton.run(kserve_server.port, steps)

    want = _vae_score(vae_stub, x, include_kl_per_dim=True)
    assert (score["model_name"], score["model_version"], score["id"]) == ("digits", "1", "score-1")
    assert set(score["outputs"]) == {
        "kl", "kl_per_dim", "recon_nll", "neg_elbo", "p_value", "is_anomaly",
    }  # fmt: skip
    _assert_scores_match(score, want)
    assert score["parameters"] == {"score": "neg_elbo", "threshold": want.threshold}
    assert 0 < sum(_out(score, "is_anomaly")) <= 10  # the noise rows, not the digits
    assert score["outputs"]["p_value"]["datatype"] == "FP64"
    assert score["outputs"]["is_anomaly"]["datatype"] == "BOOL"

    np.testing.assert_allclose(_out(encoded, "mu"), mu, **TOL)
    np.testing.assert_allclose(_out(encoded, "logvar"), arr(enc.logvar), **TOL)
    np.testing.assert_allclose(_out(enc64, "mu"), mu, **TOL)
    np.testing.assert_allclose(_out(decoded, "x_hat"), arr(dec.rows), **TOL)
    assert decoded["model_name"] == "digits.decoder"

    want_kl = _vae_score(vae_stub, x, score=vae_pb2.KL, threshold=5.0)
    assert list(flagged["outputs"]) == ["kl", "is_anomaly"]
    np.testing.assert_allclose(_out(flagged, "kl"), arr(want_kl.kl), **TOL)
    assert _out(flagged, "is_anomaly").tolist() == (arr(want_kl.kl) > 5.0).tolist()
    assert flagged["parameters"] == {"score": "kl", "threshold": 5.0}

    want_iw = _vae_score(vae_stub, x[:6], iw_samples=16, seed=3)
    np.testing.assert_allclose(_out(iw, "iw_nll"), arr(want_iw.iw_nll), **TOL)

    # explanations: INT64 feature indices and FP32 NLLs [n, K], as vae.v1 answers them
    want_why = _vae_score(vae_stub, x, explain=3)
    assert why["outputs"]["explain_index"]["datatype"] == "INT64"
    assert _out(why, "explain_index").tolist() == arr(want_why.explain_index).tolist()
    np.testing.assert_allclose(_out(why, "explain_nll"), arr(want_why.explain_nll), **TOL)


def test_stream_matches_vae_v1_and_errors_stay_in_stream(
    triton: Triton, kserve_server, vae_stub, mixed_rows
) -> None:
    x = mixed_rows
    requests = [
        {"model": "digits", "id": "s0", "inputs": _x(triton, x[:20])},
        {"model": "digits", "id": "s1", "inputs": _x(triton, x[:5, :63])},
        {"model": "nope", "id": "s2", "inputs": _x(triton, x[:5])},
        {"model": "digits.encoder", "id": "s3", "inputs": _x(triton, x[20:])},
        {"model": "digits", "version": "7", "id": "s4", "inputs": _x(triton, x[:3])},
        {"model": "digits", "id": "s5", "inputs": _x(triton, x[20:])},
    ]
    (stream,) = triton.run(kserve_server.port, [{"op": "stream", "requests": requests}])
    assert stream["complete"], stream
    r = stream["responses"]
    assert len(r) == 6
    _assert_scores_match(r[0], _vae_score(vae_stub, x[:20], include_kl_per_dim=True))
    assert r[0]["id"] == "s0"
    assert r[1]["error"]["message"].startswith("INVALID_ARGUMENT: ")
    assert "63 features per row but model 'digits' version 1 expects 64" in r[1]["error"]["message"]
    assert r[2]["error"]["message"].startswith("NOT_FOUND: model 'nope' is not loaded")
    enc = vae_stub.Encode(vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(x[20:])))
    np.testing.assert_allclose(_out(r[3], "mu"), arr(enc.mu), **TOL)
    assert "has no version 7" in r[4]["error"]["message"]
    _assert_scores_match(r[5], _vae_score(vae_stub, x[20:]))  # answered after the errors


def test_tls_mtls_and_token_with_tritonclient(
    triton: Triton, model_repo: Path, tmp_path: Path, mixed_rows
) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = local_settings(
        model_repo,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
        tokens="tok-a,tok-b",
    )
    infer = {"op": "infer", "model": "digits", "inputs": _x(triton, mixed_rows[:4])}
    good = {
        "ssl": True,
        "root_certificates": str(pki.ca.cert),
        "private_key": str(pki.client.key),
        "certificate_chain": str(pki.client.cert),
    }
    with start_server(settings) as server:
        port = server.port
        (ok,) = triton.run(port, [infer], headers={"authorization": "Bearer tok-b"}, **good)
        assert "error" not in ok and len(ok["outputs"]["kl"]["data"]) == 4
        (no_token,) = triton.run(port, [infer], **good)
        assert no_token["error"]["status"] == "StatusCode.UNAUTHENTICATED"
        (bad_token,) = triton.run(port, [infer], headers={"authorization": "Bearer tok-c"}, **good)
        assert bad_token["error"]["status"] == "StatusCode.UNAUTHENTICATED"
        no_cert = {"ssl": True, "root_certificates": str(pki.ca.cert)}
        (refused,) = triton.run(port, [infer], headers={"authorization": "Bearer tok-a"}, **no_cert)
        assert refused["error"]["status"] == "StatusCode.UNAVAILABLE"
        rogue = {
            **good,
            "private_key": str(pki.rogue_client.key),
            "certificate_chain": str(pki.rogue_client.cert),
        }
        (refused,) = triton.run(port, [infer], headers={"authorization": "Bearer tok-a"}, **rogue)
        assert refused["error"]["status"] == "StatusCode.UNAVAILABLE"
        (plain,) = triton.run(port, [infer], headers={"authorization": "Bearer tok-a"})
        assert plain["error"]["status"] == "StatusCode.UNAVAILABLE"
