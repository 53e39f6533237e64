"""Every bad input gets the right status and a message that says what to fix."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from tests.server.conftest import local_settings
from tests.server.helpers import arr, ref, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import start_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _rows(n: int = 4, d: int = 64) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(n, d)).astype(np.float32)


def _encode_error(stub, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Encode(vae_pb2.EncodeRequest(**kw))
    return exc.value


def test_wrong_feature_count(digits_stub) -> None:
    err = _encode_error(digits_stub, rows=to_tensor(_rows(3, 63)))
    assert err.code() == INVALID
    assert "63 features per row" in err.details() and "expects 64" in err.details()


def test_rows_not_2d(digits_stub) -> None:
    err = _encode_error(digits_stub, rows=to_tensor(_rows(1)[0]))
    assert err.code() == INVALID and "[1, 64]" in err.details()


def test_missing_rows(digits_stub) -> None:
    err = _encode_error(digits_stub, model=ref("digits"))
    assert err.code() == INVALID and "rows is missing" in err.details()


@pytest.mark.parametrize("dtype", [vae_pb2.BOOL, vae_pb2.DATA_TYPE_UNSPECIFIED, 99])
def test_wrong_dtype(digits_stub, dtype: int) -> None:
    t = vae_pb2.Tensor(dtype=dtype, shape=[2, 64], data=b"\x00" * 128)
    err = _encode_error(digits_stub, rows=t)
    assert err.code() == INVALID
    assert "dtype" in err.details() and "FLOAT32" in err.details()


def test_bytes_do_not_match_shape(digits_stub) -> None:
    t = to_tensor(_rows(2))
    t.data = t.data[:-4]
    err = _encode_error(digits_stub, rows=t)
    assert err.code() == INVALID
    assert "508 bytes" in err.details() and "512 bytes expected" in err.details()


def test_nan_and_inf_rows_are_counted(digits_stub) -> None:
    x = _rows(10)
    x[3, 5] = np.nan
    x[7, 0] = np.inf
    x[8, :] = -np.inf
    err = _encode_error(digits_stub, rows=to_tensor(x))
    assert err.code() == INVALID
    assert "3 of 10 rows" in err.details() and "first at row index 3" in err.details()


def test_float64_beyond_float32_range_is_inf(digits_stub) -> None:
    x = _rows(2).astype(np.float64)
    x[1, 1] = 1e300
    err = _encode_error(digits_stub, rows=to_tensor(x))
    assert err.code() == INVALID and "row index 1" in err.details()


def test_unknown_model_and_version(digits_stub) -> None:
    err = _encode_error(digits_stub, model=ref("nope"), rows=to_tensor(_rows()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in err.details() and "digits (version 1)" in err.details()
    err = _encode_error(digits_stub, model=ref("digits", 7), rows=to_tensor(_rows()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "no version 7" in err.details() and "loaded versions: 1" in err.details()
    err = _encode_error(digits_stub, model=ref("digits", -1), rows=to_tensor(_rows()))
    assert err.code() == INVALID


def test_condition_on_unconditional_model(digits_stub) -> None:
    err = _encode_error(
        digits_stub, rows=to_tensor(_rows(2)), condition=to_tensor(np.ones((2, 3), np.float32))
    )
    assert err.code() == INVALID and "unconditional" in err.details()


def test_conditional_model_needs_matching_condition(synth_stub) -> None:
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(grpc.RpcError) as exc:
        synth_stub.Encode(vae_pb2.EncodeRequest(model=ref("cond"), rows=to_tensor(x)))
    assert exc.value.code() == INVALID and "send condition" in exc.value.details()
    assert "class0, class1, class2" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        synth_stub.Encode(
            vae_pb2.EncodeRequest(
                model=ref("cond"),
                rows=to_tensor(x),
                condition=to_tensor(np.ones((3, 3), np.float32)),
            )
        )
    assert exc.value.code() == INVALID and "condition has 3 rows" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        synth_stub.Encode(
            vae_pb2.EncodeRequest(
                model=ref("cond"),
                rows=to_tensor(x),
                condition=to_tensor(np.ones((4, 2), np.float32)),
            )
        )
    assert exc.value.code() == INVALID and "2 columns per row" in exc.value.details()


def test_model_name_needed_when_several_models(synth_stub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        synth_stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(np.zeros((1, 12), np.float32))))
    assert exc.value.code() == INVALID and "model.name is required" in exc.value.details()


def test_decode_wrong_latent_dim(digits_stub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        digits_stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(np.zeros((2, 5), np.float32))))
    assert exc.value.code() == INVALID and "5 latent dimensions" in exc.value.details()


def test_sample_bad_n(digits_stub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        digits_stub.Sample(vae_pb2.SampleRequest(n=0))
    assert exc.value.code() == INVALID and "n must be at least 1" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        digits_stub.Sample(vae_pb2.SampleRequest(n=100000))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4096" in exc.value.details()


def test_too_many_rows_is_resource_exhausted(digits_stub) -> None:
    err = _encode_error(digits_stub, rows=to_tensor(np.zeros((4097, 64), np.float32)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 4096 rows" in err.details() and "max_request_rows" in err.details()


def test_score_stream_bad_batches_answer_in_band_and_stream_goes_on(digits_stub) -> None:
    good = to_tensor(_rows(5))
    nan = _rows(5)
    nan[2, 2] = np.nan
    reqs = [
        vae_pb2.ScoreRequest(model=ref("digits"), batch_id="ok0", rows=good),
        vae_pb2.ScoreRequest(batch_id="short", rows=to_tensor(_rows(5, 60))),
        vae_pb2.ScoreRequest(batch_id="nan", rows=to_tensor(nan)),
        vae_pb2.ScoreRequest(batch_id="big", rows=to_tensor(np.zeros((5000, 64), np.float32))),
        vae_pb2.ScoreRequest(batch_id="ids", rows=good, row_ids=to_tensor(np.arange(4))),
        vae_pb2.ScoreRequest(
            batch_id="idtype",
            rows=good,
            row_ids=to_tensor(np.arange(5, dtype=np.int32).astype(np.float32)),
        ),
        vae_pb2.ScoreRequest(batch_id="kind", rows=good, score=42),
        vae_pb2.ScoreRequest(batch_id="thr", rows=good, threshold=float("nan")),
        vae_pb2.ScoreRequest(batch_id="iw", rows=good, iw_samples=100000),
        vae_pb2.ScoreRequest(batch_id="switch", model=ref("other"), rows=good),
        vae_pb2.ScoreRequest(batch_id="ok1", rows=good),
    ]
    resps = list(digits_stub.Score(iter(reqs)))
    assert [r.batch_id for r in resps] == [r.batch_id for r in reqs]
    by = {r.batch_id: r for r in resps}
    for bid in ("ok0", "ok1"):
        assert not by[bid].HasField("error") and list(by[bid].kl.shape) == [5]
    np.testing.assert_array_equal(arr(by["ok0"].kl), arr(by["ok1"].kl))
    expect = {
        "short": (3, "60 features"),
        "nan": (3, "first at row index 2"),
        "big": (8, "at most 4096 rows"),
        "ids": (3, "row_ids has shape [4]"),
        "idtype": (3, "send INT64"),
        "kind": (3, "not a ScoreKind"),
        "thr": (3, "finite"),
        "iw": (8, "max_iw_samples"),
        "switch": (3, "first message"),
    }
    for bid, (code, text) in expect.items():
        err = by[bid].error
        assert err.code == code and text in err.message, (bid, err)
        assert not by[bid].HasField("kl")


def test_score_stream_unknown_model_in_band(digits_stub) -> None:
    reqs = [
        vae_pb2.ScoreRequest(model=ref("nope"), batch_id="x", rows=to_tensor(_rows(2))),
        vae_pb2.ScoreRequest(batch_id="y", rows=to_tensor(_rows(2))),
    ]
    resps = list(digits_stub.Score(iter(reqs)))
    assert [r.error.code for r in resps] == [5, 5]
    assert "'nope' is not loaded" in resps[0].error.message


def test_bad_requests_leave_other_streams_alone(digits_stub) -> None:
    ok = [vae_pb2.ScoreRequest(batch_id=str(i), rows=to_tensor(_rows(3))) for i in range(20)]
    stream = digits_stub.Score(iter(ok))
    for _ in range(5):
        _encode_error(digits_stub, rows=to_tensor(_rows(3, 10)))
    resps = list(stream)
    assert len(resps) == 20 and not any(r.HasField("error") for r in resps)


def test_message_over_max_size_is_resource_exhausted(model_repo) -> None:
    server = start_server(local_settings(model_repo, max_message_bytes=64 * 1024))
    try:
        channel, stub = stub_for(server.port)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(np.zeros((1000, 64), np.float32))))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(np.zeros((10, 64), np.float32))))
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_configured_row_limit(model_repo) -> None:
    server = start_server(local_settings(model_repo, max_request_rows=10, max_iw_samples=3))
    try:
        channel, stub = stub_for(server.port)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Reconstruct(vae_pb2.ReconstructRequest(rows=to_tensor(_rows(11))))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 10 rows" in exc.value.details()
        stub.Reconstruct(vae_pb2.ReconstructRequest(rows=to_tensor(_rows(10))))
        (resp,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(_rows(2)), iw_samples=4)]))
        assert resp.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "limit of 3" in resp.error.message
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_deadline_drops_queued_request(model_repo) -> None:
    # A long queue delay and a batch that never fills: the request waits in the batcher until
    # its deadline passes; the server must drop it instead of running it.
    server = start_server(
        local_settings(model_repo, max_queue_delay_ms=30_000, max_batch_rows=4096)
    )
    try:
        channel, stub = stub_for(server.port)
        batcher = server.app.repository.get("digits").batchers["encoder"]
        calls = batcher.stats.calls
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(2))), timeout=0.5)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(200):
            if batcher.stats.dropped:
                break
            time.sleep(0.05)
        assert batcher.stats.dropped == 1 and batcher.stats.calls == calls
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_cancelled_stream_frees_the_server(digits_stub) -> None:
    def forever():
        i = 0
        while True:
            yield vae_pb2.ScoreRequest(batch_id=str(i), rows=to_tensor(_rows(8)))
            i += 1

    call = digits_stub.Score(forever())
    got = [next(call) for _ in range(3)]
    assert [r.batch_id for r in got] == ["0", "1", "2"]
    call.cancel()
    with pytest.raises(grpc.RpcError) as exc:
        for _ in call:
            pass
    assert exc.value.code() == grpc.StatusCode.CANCELLED
    (resp,) = digits_stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(_rows(2)))]))
    assert not resp.HasField("error")


def test_stream_deadline(digits_stub) -> None:
    def slow():
        yield vae_pb2.ScoreRequest(batch_id="0", rows=to_tensor(_rows(2)))
        time.sleep(3)
        yield vae_pb2.ScoreRequest(batch_id="1", rows=to_tensor(_rows(2)))

    call = digits_stub.Score(slow(), timeout=1.0)
    with pytest.raises(grpc.RpcError) as exc:
        list(call)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    digits_stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1))))
