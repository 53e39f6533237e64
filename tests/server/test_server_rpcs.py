"""Every vae.v1 RPC against a real in-process server, checked against onnxruntime run directly."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sklearn.datasets import load_digits

from tests.server.helpers import TOL, Reference, arr, ref, score_requests, stub_for
from vaeserve.common.calibration import PValues
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server.dataplane import draw_normal


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    return load_digits().data.astype(np.float32)


def test_encode_matches_onnxruntime(digits_stub, digits_ref: Reference, digits_x) -> None:
    x = digits_x[:37]
    resp = digits_stub.Encode(vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(x)))
    want = digits_ref.run("encoder", x=x)
    assert (resp.model.name, resp.model.version) == ("digits", 1)
    np.testing.assert_allclose(arr(resp.mu), want["mu"], **TOL)
    np.testing.assert_allclose(arr(resp.logvar), want["logvar"], **TOL)
    assert resp.mu.dtype == vae_pb2.FLOAT32 and list(resp.mu.shape) == [37, 8]
    assert not resp.HasField("z")


def test_encode_sample_uses_seeded_pcg64(digits_stub, digits_ref: Reference, digits_x) -> None:
    x = digits_x[:10]
    req = vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(x), sample=True, seed=123)
    a, b = digits_stub.Encode(req), digits_stub.Encode(req)
    want = digits_ref.run("encoder", x=x)
    eps = np.random.Generator(np.random.PCG64(123)).standard_normal((10, 8)).astype(np.float32)
    z = want["mu"] + np.exp(0.5 * want["logvar"]) * eps
    np.testing.assert_allclose(arr(a.z), z, **TOL)
    np.testing.assert_array_equal(arr(a.z), arr(b.z))
    req.seed = 124
    assert not np.allclose(arr(digits_stub.Encode(req).z), arr(a.z))


def test_encode_converts_float64_and_int64(digits_stub, digits_ref: Reference, digits_x) -> None:
    x = digits_x[:5]
    want = digits_ref.run("encoder", x=x)["mu"]
    for rows in (x.astype(np.float64), x.astype(np.int64), x.astype(np.float16)):
        resp = digits_stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(rows)))
        np.testing.assert_allclose(arr(resp.mu), want, **TOL)


def test_decode_matches_onnxruntime(digits_stub, digits_ref: Reference) -> None:
    z = np.random.default_rng(0).normal(size=(9, 8)).astype(np.float32)
    resp = digits_stub.Decode(vae_pb2.DecodeRequest(model=ref("digits", 1), z=to_tensor(z)))
    np.testing.assert_allclose(arr(resp.rows), digits_ref.run("decoder", z=z)["x_hat"], **TOL)
    assert resp.model.version == 1


def test_sample_decodes_seeded_draws(digits_stub, digits_ref: Reference) -> None:
    resp = digits_stub.Sample(vae_pb2.SampleRequest(model=ref("digits"), n=16, seed=7))
    z = draw_normal(7, (16, 8))
    np.testing.assert_array_equal(arr(resp.z), z)
    np.testing.assert_array_equal(
        z, np.random.Generator(np.random.PCG64(7)).standard_normal((16, 8)).astype(np.float32)
    )
    np.testing.assert_allclose(arr(resp.rows), digits_ref.run("decoder", z=z)["x_hat"], **TOL)
    assert list(resp.rows.shape) == [16, 64]


def test_reconstruct_is_decoder_of_posterior_mean(digits_stub, digits_ref, digits_x) -> None:
    x = digits_x[100:120]
    resp = digits_stub.Reconstruct(vae_pb2.ReconstructRequest(rows=to_tensor(x)))
    mu = digits_ref.run("encoder", x=x)["mu"]
    np.testing.assert_allclose(arr(resp.rows), digits_ref.run("decoder", z=mu)["x_hat"], **TOL)


def test_score_stream_matches_onnxruntime(digits_stub, digits_ref: Reference, digits_x) -> None:
    x = digits_x[:300]
    reqs = score_requests(x, 64, model="digits", include_kl_per_dim=True)
    resps = list(digits_stub.Score(iter(reqs)))
    assert [r.batch_id for r in resps] == [f"b{i}" for i in range(len(reqs))]
    want = digits_ref.run("scorer", x=x)
    cal = digits_ref.manifest.calibration
    got = {
        k: np.concatenate([arr(getattr(r, k)) for r in resps])
        for k in ("kl", "kl_per_dim", "recon_nll", "neg_elbo", "p_value", "is_anomaly", "row_ids")
    }
    for k in ("kl", "kl_per_dim", "recon_nll", "neg_elbo"):
        np.testing.assert_allclose(got[k], want[k], **TOL)
    np.testing.assert_array_equal(got["row_ids"], np.arange(300))
    flag = cal.default_score
    np.testing.assert_allclose(got["p_value"], PValues(cal, flag)(want[flag]), rtol=1e-4)
    assert got["p_value"].dtype == np.float64 and got["is_anomaly"].dtype == np.bool_
    thr = cal.thresholds[flag]
    agree = got["is_anomaly"] == (want[flag] > thr)
    assert agree.all() or np.allclose(want[flag][~agree], thr, rtol=1e-5)
    kinds = {"kl": vae_pb2.KL, "recon_nll": vae_pb2.RECON_NLL, "neg_elbo": vae_pb2.NEG_ELBO}
    for r in resps:
        assert r.score == kinds[flag] and r.threshold == pytest.approx(thr)
        assert (r.model.name, r.model.version) == ("digits", 1)
        assert not r.HasField("error") and not r.HasField("iw_nll")


def test_score_row_ids_threshold_and_score_kind(digits_stub, digits_ref, digits_x) -> None:
    x = digits_x[:50]
    ids = np.arange(1000, 1050, dtype=np.int64)[::-1].copy()
    req = vae_pb2.ScoreRequest(
        batch_id="only",
        rows=to_tensor(x),
        row_ids=to_tensor(ids),
        score=vae_pb2.NEG_ELBO,
        threshold=150.0,
    )
    (resp,) = digits_stub.Score(iter([req]))
    want = digits_ref.run("scorer", x=x)
    np.testing.assert_array_equal(arr(resp.row_ids), ids)
    assert resp.score == vae_pb2.NEG_ELBO and resp.threshold == 150.0
    np.testing.assert_array_equal(arr(resp.is_anomaly), want["neg_elbo"] > 150.0)
    pv = PValues(digits_ref.manifest.calibration, "neg_elbo")(want["neg_elbo"])
    np.testing.assert_allclose(arr(resp.p_value), pv, rtol=1e-4)
    assert not resp.HasField("kl_per_dim")

    req = vae_pb2.ScoreRequest(rows=to_tensor(x), start_offset=77, score=vae_pb2.RECON_NLL)
    (resp,) = digits_stub.Score(iter([req]))
    np.testing.assert_array_equal(arr(resp.row_ids), np.arange(77, 127))
    thr = digits_ref.manifest.calibration.thresholds["recon_nll"]
    assert resp.threshold == pytest.approx(thr)


def test_score_importance_weighted_nll(digits_stub, digits_ref: Reference, digits_x) -> None:
    x = digits_x[:40]
    reqs = [
        vae_pb2.ScoreRequest(batch_id="a", rows=to_tensor(x[:25]), iw_samples=32, seed=5),
        vae_pb2.ScoreRequest(batch_id="b", rows=to_tensor(x[25:]), iw_samples=8, seed=6),
    ]
    a, b = digits_stub.Score(iter(reqs))
    for resp, rows, k, seed in ((a, x[:25], 32, 5), (b, x[25:], 8, 6)):
        noise = draw_normal(seed, (k, len(rows), 8))
        want = digits_ref.run("iw_scorer", x=rows, noise=noise)["iw_nll"]
        np.testing.assert_allclose(arr(resp.iw_nll), want, rtol=1e-5, atol=1e-4)
        assert resp.iw_nll.dtype == vae_pb2.FLOAT32


def test_score_empty_batch(digits_stub) -> None:
    req = vae_pb2.ScoreRequest(batch_id="e", rows=to_tensor(np.zeros((0, 64), np.float32)))
    (resp,) = digits_stub.Score(iter([req]))
    assert not resp.HasField("error")
    assert list(resp.kl.shape) == [0] and list(resp.row_ids.shape) == [0]


def test_model_info(digits_stub, digits_ref: Reference, model_repo) -> None:
    info = digits_stub.ModelInfo(vae_pb2.ModelInfoRequest(model=ref("digits")))
    m = digits_ref.manifest
    assert (info.model.name, info.model.version) == ("digits", 1)
    assert list(info.versions) == [1]
    assert list(info.providers) == ["CPUExecutionProvider"] and info.device == "cpu"
    assert info.ready
    s = info.schema
    assert (s.input_dim, s.latent_dim, s.cond_dim) == (64, 8, 0)
    assert list(s.feature_names) == m.feature_names
    kinds = {"kl": vae_pb2.KL, "recon_nll": vae_pb2.RECON_NLL, "neg_elbo": vae_pb2.NEG_ELBO}
    assert s.likelihood == m.likelihood
    assert s.default_score == kinds[m.calibration.default_score]
    assert dict(s.thresholds) == pytest.approx(m.calibration.thresholds)
    on_disk = json.loads((model_repo / "digits" / "1" / "manifest.json").read_text())
    sent = json.loads(info.manifest_json)
    # clients get the manifest without server paths: no run directory, no data file path
    assert "run_dir" in on_disk["training"]["config"]
    assert "run_dir" not in sent["training"]["config"]
    del on_disk["training"]["config"]["run_dir"]
    assert sent == on_disk
    assert str(model_repo) not in info.manifest_json
    assert json.loads(info.manifest_json)["name"] == "digits"


def test_list_models(digits_stub) -> None:
    resp = digits_stub.ListModels(vae_pb2.ListModelsRequest())
    assert [(m.name, list(m.versions), m.latest, m.ready) for m in resp.models] == [
        ("digits", [1], 1, True)
    ]


def test_health_overall_and_per_model(digits_server) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{digits_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "vae.v1.VaeService", "digits", "digits/1"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as exc:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_reflection_lists_and_describes_services(digits_server) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{digits_server.port}")
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"vae.v1.VaeService", "grpc.health.v1.Health"} <= services
    svc = DescriptorPool(db).FindServiceByName("vae.v1.VaeService")
    assert {m.name for m in svc.methods} == {
        "Encode",
        "Decode",
        "Sample",
        "Reconstruct",
        "Score",
        "ModelInfo",
        "ListModels",
        "ModelDrift",
    }
    channel.close()


# ---- conditional model (synthetic graphs) -------------------------------------------------
def _cond_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32) * 2
    cond = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    return x, cond


def test_conditional_model_rpcs(synth_stub, synth_repo) -> None:
    r = Reference(synth_repo / "cond" / "1")
    x, cond = _cond_rows(30)
    model = ref("cond")
    enc = synth_stub.Encode(
        vae_pb2.EncodeRequest(model=model, rows=to_tensor(x), condition=to_tensor(cond))
    )
    want = r.run("encoder", x=x, cond=cond)
    np.testing.assert_allclose(arr(enc.mu), want["mu"], **TOL)
    np.testing.assert_allclose(arr(enc.logvar), want["logvar"], **TOL)

    z = arr(enc.mu)
    dec = synth_stub.Decode(
        vae_pb2.DecodeRequest(model=model, z=to_tensor(z), condition=to_tensor(cond))
    )
    np.testing.assert_allclose(arr(dec.rows), r.run("decoder", z=z, cond=cond)["x_hat"], **TOL)

    rec = synth_stub.Reconstruct(
        vae_pb2.ReconstructRequest(model=model, rows=to_tensor(x), condition=to_tensor(cond))
    )
    np.testing.assert_allclose(arr(rec.rows), arr(dec.rows), **TOL)

    (sc,) = synth_stub.Score(
        iter(
            [
                vae_pb2.ScoreRequest(
                    model=model, rows=to_tensor(x), condition=to_tensor(cond), iw_samples=4, seed=1
                )
            ]
        )
    )
    want = r.run("scorer", x=x, cond=cond)
    np.testing.assert_allclose(arr(sc.kl), want["kl"], **TOL)
    np.testing.assert_allclose(arr(sc.neg_elbo), want["neg_elbo"], **TOL)
    iw = r.run("iw_scorer", x=x, cond=cond, noise=draw_normal(1, (4, 30, 2)))["iw_nll"]
    np.testing.assert_allclose(arr(sc.iw_nll), iw, rtol=1e-5, atol=1e-4)

    info = synth_stub.ModelInfo(vae_pb2.ModelInfoRequest(model=model))
    assert info.schema.cond_dim == 3
    assert list(info.schema.condition_classes) == ["class0", "class1", "class2"]


def test_conditional_sample_broadcasts_one_condition_row(synth_stub, synth_repo) -> None:
    r = Reference(synth_repo / "cond" / "1")
    one = np.array([[0, 1, 0]], np.float32)
    resp = synth_stub.Sample(
        vae_pb2.SampleRequest(model=ref("cond"), n=6, seed=3, condition=to_tensor(one))
    )
    z = draw_normal(3, (6, 2))
    want = r.run("decoder", z=z, cond=np.repeat(one, 6, axis=0))["x_hat"]
    np.testing.assert_allclose(arr(resp.rows), want, **TOL)


def test_default_message_limit_fits_4096_rows_of_784(tmp_path) -> None:
    from tests.server.conftest import local_settings
    from tests.server.synth import write_synthetic_model
    from vaeserve.server import start_server

    write_synthetic_model(tmp_path, "wide", 1, input_dim=784, latent_dim=4, seed=3)
    server = start_server(local_settings(tmp_path))
    try:
        channel, stub = stub_for(server.port)
        x = np.random.default_rng(0).normal(size=(4096, 784)).astype(np.float32)
        rec = stub.Reconstruct(vae_pb2.ReconstructRequest(rows=to_tensor(x)))
        assert list(rec.rows.shape) == [4096, 784]
        (sc,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(x))]))
        assert list(sc.kl.shape) == [4096] and not sc.HasField("error")
        channel.close()
    finally:
        server.stop(grace=1.0)
