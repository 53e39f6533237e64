"""Explanations and drift through the server: top features on request over vae.v1 and KServe
(and nothing extra without a request), the drift window fed by scoring on both protocols and
read by ModelDrift and the gauges, and exports from before both still served.

The model is `digits_split` (tests/conftest.py): all ten digits with 539 rows it never saw.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from tests.conftest import serving, vae_stub_on
from tests.kserve.conftest import kserve_stub_for
from tests.server.helpers import Reference, arr, ref, score_requests
from tests.server.test_server_observability import free_port, metric, scrape
from vaeserve.common.drift import DriftReference
from vaeserve.common.manifest import MANIFEST_FILE, load_manifest, sha256_file
from vaeserve.common.model_scorer import ModelScorer
from vaeserve.common.tensors import to_tensor
from vaeserve.export.explain_eval import corrupt
from vaeserve.export.monitoring_figures import Exported
from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import VaeServer

EXPLAIN = ("nll", "excess", "value", "reconstruction")
WINDOW = 48  # between two stored null sizes (32, 64): the p-value interpolates


def _repo(model: Exported) -> Path:
    return model.model_dir.parents[1]


@pytest.fixture(scope="module")
def explain_server(digits_split: Exported) -> Iterator[VaeServer]:
    """A server on the split digits model that takes explanations of up to 80 features."""
    with serving(_repo(digits_split), max_explain_features=80) as server:
        yield server


def _explained(answers: list[vae_pb2.ScoreResponse]) -> dict[str, np.ndarray]:
    out = {"index": np.concatenate([arr(a.explain_index) for a in answers])}
    for name in EXPLAIN:
        out[name] = np.concatenate([arr(getattr(a, f"explain_{name}")) for a in answers])
    out["is_anomaly"] = np.concatenate([arr(a.is_anomaly) for a in answers])
    return out


def test_explanations_name_the_corrupted_feature(explain_server, digits_split) -> None:
    """Held-out digits with one pixel each shifted by k training sds (the pixel cycling over
    all 64). At 20 sds the calibrated flag catches nearly all of them and the top-1 feature of
    the flagged rows is the shifted pixel at least 90% of the time (measured: 533 of 537
    flagged, 0.99). (This model's neg_elbo threshold, the 0.99 quantile of 252 validation
    rows, is about 300 nats, which one pixel shifted by 10 sds rarely passes: 5 of 539.)
    At 5 sds the top-1 is still the shifted pixel for 90% of all rows (measured 0.95)."""
    model_dir = digits_split.model_dir
    scale = np.asarray(load_manifest(model_dir).normalisation["scale"], np.float64)
    x, shifted = corrupt(digits_split.held_out, scale, 20.0, seed=0)
    x5, shifted5 = corrupt(digits_split.held_out, scale, 5.0, seed=0)
    with vae_stub_on(explain_server) as stub:
        answers = list(stub.Score(iter(score_requests(x, 100, explain=3))))
        answers5 = list(stub.Score(iter(score_requests(x5, 100, explain=1))))
    assert not any(a.HasField("error") for a in answers + answers5)
    got = _explained(answers)
    assert got["index"].dtype == np.int64 and got["index"].shape == (len(x), 3)
    flagged = got["is_anomaly"]
    hits = got["index"][flagged, 0] == shifted[flagged]
    assert flagged.sum() >= 400, flagged.sum()
    assert hits.mean() >= 0.9, (hits.mean(), flagged.sum())
    assert (_explained(answers5)["index"][:, 0] == shifted5).mean() >= 0.9
    # the explainer graph's numbers, ranked by common.explain as in-process scoring ranks them
    want = ModelScorer.open(model_dir).explain(x, None, 3)
    assert np.array_equal(got["index"], want.index)
    for name in EXPLAIN:
        assert got[name].dtype == np.float32, name
        assert np.array_equal(got[name], getattr(want, name).astype(np.float32)), name
    assert np.array_equal(got["value"], np.take_along_axis(x, got["index"], 1))
    x_hat = Reference(model_dir).run("explainer", x=x)["x_hat"]
    np.testing.assert_allclose(
        got["reconstruction"], np.take_along_axis(x_hat, got["index"], 1), rtol=1e-5, atol=1e-5
    )


def test_without_explain_nothing_extra_is_computed_or_sent(explain_server, digits_split) -> None:
    explainer = explain_server.app.repository.get("digits").batchers["explainer"]
    x = digits_split.held_out[:90]
    before = explainer.stats.requests
    with vae_stub_on(explain_server) as stub:
        plain = list(stub.Score(iter(score_requests(x, 30))))
        _, kstub = kserve_stub_for(explain_server.port)
        kresp = kstub.ModelInfer(_infer_request(x[:5]))
        assert explainer.stats.requests == before  # the explainer graph was never called
        explained = list(stub.Score(iter(score_requests(x, 30, explain=2))))
    assert explainer.stats.requests == before + 3
    fields = [f"explain_{n}" for n in ("index", *EXPLAIN)]
    for a in plain:
        assert not any(a.HasField(f) for f in fields)
        assert a.ByteSize() < explained[0].ByteSize()
    assert not [o.name for o in kresp.outputs if o.name.startswith("explain_")]
    for a, b in zip(plain, explained, strict=True):  # the scores do not change
        assert arr(a.neg_elbo).tobytes() == arr(b.neg_elbo).tobytes()


def test_explain_limits_and_all_features(explain_server, digits_split) -> None:
    x = digits_split.held_out[:4]
    with vae_stub_on(explain_server) as stub:
        whole, over = stub.Score(
            iter(
                [
                    vae_pb2.ScoreRequest(rows=to_tensor(x), explain=70),
                    vae_pb2.ScoreRequest(rows=to_tensor(x), explain=81),
                ]
            )
        )
    # more features than the model has: every feature, ranked
    index = arr(whole.explain_index)
    assert index.shape == (4, 64)
    assert (np.sort(index, axis=1) == np.arange(64)).all()
    assert np.all(np.diff(arr(whole.explain_excess), axis=1) <= 0)
    assert over.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "max_explain_features" in over.error.message and "81" in over.error.message


def _infer_request(x: np.ndarray, model: str = "digits", **params: int) -> kpb.ModelInferRequest:
    req = kpb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    for k, v in params.items():
        req.parameters[k].int64_param = v
    return req


def _kserve_outputs(resp: kpb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_, "INT64": np.int64}
    return {
        o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(list(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


def test_explain_through_kserve(explain_server, digits_split) -> None:
    x = np.ascontiguousarray(digits_split.held_out[:20])
    channel, kstub = kserve_stub_for(explain_server.port)
    with channel, vae_stub_on(explain_server) as stub:
        meta = kstub.ModelMetadata(kpb.ModelMetadataRequest(name="digits"))
        declared = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
        assert declared["explain_index"] == ("INT64", [-1, -1])
        assert declared["explain_nll"] == ("FP32", [-1, -1])
        resp = kstub.ModelInfer(_infer_request(x, explain=4))
        (want,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(x), explain=4)]))
        with pytest.raises(grpc.RpcError) as exc:
            request = _infer_request(x)
            request.outputs.add(name="explain_nll")
            kstub.ModelInfer(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs the request parameter explain > 0" in exc.value.details()
    out = _kserve_outputs(resp)
    assert [o.datatype for o in resp.outputs if o.name == "explain_index"] == ["INT64"]
    assert np.array_equal(out["explain_index"], arr(want.explain_index))
    for name in EXPLAIN:
        assert np.array_equal(out[f"explain_{name}"], arr(getattr(want, f"explain_{name}")))


def _drift(stub, model: str = "digits") -> vae_pb2.ModelDriftResponse:
    return stub.ModelDrift(vae_pb2.ModelDriftRequest(model=ref(model)))


def _wait_for(port: int, name: str, value: float, **labels: str) -> dict:
    """The metrics page once `name{labels}` equals value (the periodic task has run)."""
    deadline = time.monotonic() + 20
    while True:
        page = scrape(port)
        if metric(page, name, **labels) == value or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def test_drift_window_fed_by_both_protocols(digits_split, tmp_path: Path) -> None:
    """A window of 48 held-out rows reads as the offline statistic of those rows, with a
    p-value that is not small; 48 held-out ones (another digit class) push them out and read
    as drift. Encode never feeds the window; gauges follow and go with the version."""
    repo = tmp_path / "repo"
    shutil.copytree(_repo(digits_split), repo)
    model_dir = repo / "digits" / "1"
    reference = DriftReference.from_manifest(load_manifest(model_dir))
    scorer = ModelScorer.open(model_dir)
    rng = np.random.default_rng(0)
    normal = digits_split.held_out[rng.choice(len(digits_split.held_out), WINDOW, replace=False)]
    ones = np.ascontiguousarray(digits_split.held_out[digits_split.labels == "1"][:WINDOW])
    port = free_port()
    labels = {"model": "digits", "version": "1"}
    settings = {"drift_window_rows": WINDOW, "drift_period_s": 0.2, "metrics_port": port}
    with serving(repo, **settings) as server, vae_stub_on(server) as stub:
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest())
        assert (info.monitoring.drift, info.monitoring.drift_window_rows) == (True, WINDOW)
        empty = _drift(stub)
        assert (empty.rows, empty.rows_seen, empty.kl) == (0, 0, 0.0)
        assert not empty.HasField("p_value")
        stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(normal)))
        assert _drift(stub).rows_seen == 0  # Encode is not scoring

        answers = list(stub.Score(iter(score_requests(normal, 16))))
        assert not any(a.HasField("error") for a in answers)
        calm = _drift(stub)
        want = reference.measure(*scorer.posteriors(normal))
        assert (calm.rows, calm.rows_seen, calm.window_rows) == (WINDOW, WINDOW, WINDOW)
        assert calm.kl == pytest.approx(want.kl, rel=1e-9)
        assert calm.p_value == pytest.approx(want.p_value, rel=1e-9)
        np.testing.assert_allclose(calm.kl_per_dim, want.kl_per_dim, rtol=1e-9)
        # in distribution: the exported reference alarms on ~0.1% of such windows at 1%
        assert calm.p_value > 0.01
        assert (calm.reference_rows, calm.null_method) == (reference.reference_rows, "bootstrap")
        page = _wait_for(port, "vaeserve_drift_kl", calm.kl, **labels)
        assert metric(page, "vaeserve_drift_p_value", **labels) == calm.p_value
        assert metric(page, "vaeserve_drift_window_rows", **labels) == WINDOW

        channel, kstub = kserve_stub_for(server.port)
        with channel:
            kstub.ModelInfer(_infer_request(ones))
        shifted = _drift(stub)
        assert (shifted.rows, shifted.rows_seen) == (WINDOW, 2 * WINDOW)
        assert shifted.p_value < 0.01 and shifted.kl > 5 * calm.kl
        assert shifted.kl == pytest.approx(reference.measure(*scorer.posteriors(ones)).kl)
        assert sum(shifted.share_per_dim) == pytest.approx(1.0)
        _wait_for(port, "vaeserve_drift_p_value", shifted.p_value, **labels)

        shutil.rmtree(model_dir)
        server.rescan()
        page = scrape(port)
    assert not [k for k in page if k[0].startswith("vaeserve_drift")]


def _strip_monitoring(model_dir: Path) -> None:
    """Make a model directory look like an export from before explanations and drift: no
    explainer graph, no explain/drift sections, a scorer without mu/logvar outputs."""
    (model_dir / "explainer.onnx").unlink()
    scorer = model_dir / "scorer.onnx"
    graph = onnx.load(scorer)
    keep = [o for o in graph.graph.output if o.name not in ("mu", "logvar")]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    onnx.save(graph, scorer)
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    for key in ("explain", "drift"):
        del manifest[key]
    del manifest["graphs"]["explainer"]
    spec = manifest["graphs"]["scorer"]
    spec["outputs"] = spec["outputs"][:4]
    spec["sha256"] = sha256_file(scorer)
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_exports_without_explain_or_drift_still_serve(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "digits", repo / "old")
    _strip_monitoring(repo / "old" / "1")
    x = np.random.default_rng(1).uniform(0, 16, (3, 64)).astype(np.float32)
    port = free_port()
    with serving(repo, metrics_port=port) as server, vae_stub_on(server) as stub:
        mon = stub.ModelInfo(vae_pb2.ModelInfoRequest(model=ref("old"))).monitoring
        assert (mon.explain, mon.drift, mon.drift_window_rows) == (False, False, 0)
        assert "re-export" in mon.unavailable
        plain, explained = stub.Score(
            iter(
                [
                    vae_pb2.ScoreRequest(model=ref("old"), rows=to_tensor(x)),
                    vae_pb2.ScoreRequest(rows=to_tensor(x), explain=2),
                ]
            )
        )
        with pytest.raises(grpc.RpcError) as drift:
            _drift(stub, "old")
        channel, kstub = kserve_stub_for(server.port)
        with channel:
            meta = kstub.ModelMetadata(kpb.ModelMetadataRequest(name="old"))
            with pytest.raises(grpc.RpcError) as kexplain:
                kstub.ModelInfer(_infer_request(x, model="old", explain=2))
        page = scrape(port)
    # scored as before, with the same numbers as the full export of the same weights
    want = Reference(model_repo / "digits" / "1").run("scorer", x=x)
    np.testing.assert_allclose(arr(plain.neg_elbo), want["neg_elbo"], rtol=1e-5, atol=1e-5)
    assert explained.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "without an explainer" in explained.error.message
    assert "re-export" in explained.error.message
    assert drift.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without a drift reference" in drift.value.details()
    assert kexplain.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not [o.name for o in meta.outputs if o.name.startswith("explain_")]
    assert not [k for k in page if k[0].startswith("vaeserve_drift")]
    graphs = {dict(k[1]).get("graph") for k in page if k[0] == "vaeserve_execution_provider"}
    assert graphs == {"encoder", "decoder", "scorer", "iw_scorer"}


def test_drift_off_keeps_no_window(model_repo: Path) -> None:
    with serving(model_repo, drift_window_rows=0) as server, vae_stub_on(server) as stub:
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest())
        assert (info.monitoring.drift, info.monitoring.explain) == (False, True)
        with pytest.raises(grpc.RpcError) as exc:
            _drift(stub)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "drift_window_rows" in exc.value.details()
