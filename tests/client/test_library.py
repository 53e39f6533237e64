"""VaeClient against a real server on loopback: every call, streaming order and bounds, errors,
retries across a server restart, bearer tokens, TLS and round-robin load balancing."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest

from tests.client.conftest import MODEL, free_port, server_settings
from vaeserve.client import Batch, VaeClient, VaeClientError, parse_model
from vaeserve.server import start_server


def _scores(client: VaeClient, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of rows in one batch: the reference the other tests compare to."""
    (result,) = client.score([rows], model=MODEL, include_kl_per_dim=True)
    return {
        "kl": result.kl,
        "recon_nll": result.recon_nll,
        "neg_elbo": result.neg_elbo,
        "p_value": result.p_value,
        "is_anomaly": result.is_anomaly,
        "kl_per_dim": result.kl_per_dim,
    }


def test_health_list_and_info(client: VaeClient) -> None:
    assert client.health() == "SERVING"
    models = client.list_models()
    assert [m.name for m in models] == [MODEL]
    assert models[0].latest == 1 and models[0].ready
    info = client.model_info(MODEL)
    assert (info.name, info.version, info.input_dim, info.cond_dim) == (MODEL, 1, 64, 0)
    assert len(info.feature_names) == 64 and info.latent_dim > 0
    assert info.default_score in ("kl", "recon_nll", "neg_elbo")
    assert set(info.thresholds) == {"kl", "recon_nll", "neg_elbo"}
    assert info.manifest["name"] == MODEL and info.device == "cpu"
    assert client.model_info(f"{MODEL}:1").version == 1


def test_encode_decode_reconstruct_sample(client: VaeClient, digits) -> None:
    x = digits[0][:50]
    info = client.model_info(MODEL)
    enc = client.encode(x, model=MODEL)
    assert enc.mu.shape == enc.logvar.shape == (50, info.latent_dim) and enc.z is None
    assert enc.model == (MODEL, 1)
    drawn = client.encode(x, model=MODEL, sample=True, seed=3)
    assert drawn.z is not None and drawn.z.shape == enc.mu.shape
    np.testing.assert_array_equal(drawn.mu, enc.mu)
    decoded = client.decode(enc.mu, model=MODEL)
    assert decoded.shape == (50, 64) and decoded.dtype == np.float32
    np.testing.assert_allclose(client.reconstruct(x, model=MODEL), decoded, rtol=1e-5, atol=1e-5)
    a = client.sample(7, model=MODEL, seed=11)
    b = client.sample(7, model=MODEL, seed=11)
    assert a.rows.shape == (7, 64) and a.z.shape == (7, info.latent_dim)
    np.testing.assert_array_equal(a.rows, b.rows)
    assert client.sample(0, model=MODEL).rows.shape == (0, 64)


def test_large_arrays_are_split_into_requests_under_the_limits(target: str, digits) -> None:
    """Small request limits force splitting; the answers are the same as one request's."""
    x = np.tile(digits[0], (3, 1))  # 5391 rows, more than the server's 4096 rows per request
    with VaeClient(target) as plain, VaeClient(target, max_request_rows=500) as small:
        np.testing.assert_array_equal(
            small.encode(x, model=MODEL).mu, plain.encode(x, model=MODEL).mu
        )
        np.testing.assert_array_equal(
            small.reconstruct(x[:1200], model=MODEL), plain.reconstruct(x[:1200], model=MODEL)
        )
        (whole,) = plain.score([x], model=MODEL)
        (split,) = small.score([x], model=MODEL)
    assert len(whole) == len(split) == len(x)
    np.testing.assert_array_equal(whole.kl, split.kl)
    np.testing.assert_array_equal(whole.row_ids, np.arange(len(x)))


def test_sample_streams_one_request_at_a_time(target: str, tmp_path: Path) -> None:
    """iter_sample yields each request's rows (part k drawn with seed + k); sample_to_file writes
    them as they come and matches sample() on the same limits."""
    from vaeserve.client.transforms import sample_to_file

    with VaeClient(target, max_request_rows=10) as small:
        parts = list(small.iter_sample(25, model=MODEL, seed=5))
        assert [len(p.rows) for p in parts] == [10, 10, 5]
        whole = small.sample(25, model=MODEL, seed=5)
        np.testing.assert_array_equal(np.concatenate([p.rows for p in parts]), whole.rows)
        first = small.sample(10, model=MODEL, seed=6)  # part 1 of the split request
        np.testing.assert_array_equal(parts[1].rows, first.rows)
        out = tmp_path / "gen.parquet"
        assert sample_to_file(small, str(out), 25, model=MODEL, seed=5, with_z=True) == 25
    table = pa.parquet.read_table(out)
    assert table.num_rows == 25 and table.column_names[-1].startswith("z_")
    np.testing.assert_array_equal(table.column(0).to_numpy(), whole.rows[:, 0])
    np.testing.assert_array_equal(table.column("z_0").to_numpy(), whole.z[:, 0])


def test_score_yields_in_input_order_with_row_ids(client: VaeClient, digits) -> None:
    x = digits[0]
    reference = _scores(client, x)
    sizes = [1, 100, 0, 333, 7, 0, 500, 856]
    assert sum(sizes) == len(x)
    edges = np.cumsum([0, *sizes])
    batches = [x[a:b] for a, b in itertools.pairwise(edges)]
    results = list(client.score(batches, model=MODEL, max_in_flight=3, include_kl_per_dim=True))
    assert [r.index for r in results] == list(range(len(sizes)))
    assert [len(r) for r in results] == sizes
    np.testing.assert_array_equal(np.concatenate([r.row_ids for r in results]), np.arange(len(x)))
    for key in ("kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly", "kl_per_dim"):
        got = np.concatenate([getattr(r, key) for r in results if len(r)])
        np.testing.assert_array_equal(got, reference[key], err_msg=key)
    assert all(r.model == (MODEL, 1) and r.score for r in results if len(r))


def test_score_accepts_arrow_batches_tuples_and_batches(client: VaeClient, digits) -> None:
    x, names, _ = digits
    reference = _scores(client, x[:300])
    table = pa.table({n: x[:300, j] for j, n in enumerate(names)} | {"label": ["a"] * 300})
    items = [
        table.slice(0, 100).to_batches()[0],
        (x[100:200], np.arange(1000, 1100)),
        Batch(rows=x[200:300], row_ids=np.arange(5000, 5100)),
    ]
    results = list(client.score(items, model=MODEL, columns=names))
    np.testing.assert_array_equal(np.concatenate([r.kl for r in results]), reference["kl"])
    np.testing.assert_array_equal(results[1].row_ids, np.arange(1000, 1100))
    np.testing.assert_array_equal(results[2].row_ids, np.arange(5000, 5100))


def test_score_keeps_a_bounded_number_of_batches_in_flight(client: VaeClient, digits) -> None:
    pulled = 0
    x = digits[0][:10]

    def batches() -> Iterator[np.ndarray]:
        nonlocal pulled
        for _ in range(200):
            pulled += 1
            yield x

    limit = 3
    consumed = 0
    most_ahead = 0
    for _ in client.score(batches(), model=MODEL, max_in_flight=limit):
        consumed += 1
        most_ahead = max(most_ahead, pulled - consumed)
    assert consumed == 200
    # At most `limit` unanswered requests, plus one item pulled and waiting for room.
    assert most_ahead <= limit + 1


def test_rejected_batch_raises_or_is_reported_and_the_stream_goes_on(
    client: VaeClient, digits
) -> None:
    x = digits[0][:20].copy()
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(VaeClientError) as caught:
        list(client.score([x, bad, x], model=MODEL))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN" in caught.value.details
    results = list(client.score([x, bad, x], model=MODEL, raise_errors=False))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and len(results[1]) == 20
    np.testing.assert_array_equal(results[2].row_ids, np.arange(40, 60))


def test_errors_carry_the_status_code_and_the_server_message(client: VaeClient, digits) -> None:
    with pytest.raises(VaeClientError) as caught:
        client.model_info("no-such-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in caught.value.details
    assert str(caught.value).startswith("NOT_FOUND")
    with pytest.raises(VaeClientError) as caught:
        client.encode(digits[0][:3, :10], model=MODEL)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(VaeClientError) as caught:
        list(client.score([digits[0][:5]], model="no-such-model"))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(VaeClientError, match="2-D"):
        client.encode(np.zeros((2, 3, 4)), model=MODEL)
    with pytest.raises(VaeClientError, match="version"):
        parse_model("digits:latest")


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with VaeClient(f"127.0.0.1:{free_port()}", retries=2, backoff=0.01, timeout=5) as c:
        with pytest.raises(VaeClientError) as caught:
            c.health()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_score_survives_a_server_restart_exactly_once(model_repo: Path, digits) -> None:
    """The stream breaks mid-way; the client reconnects and resends only unanswered batches."""
    x = digits[0][:50]
    servers = [start_server(server_settings(model_repo))]
    port = servers[0].port

    def batches() -> Iterator[np.ndarray]:
        for i in range(40):
            if i == 15:
                servers[0].stop(grace=0)
                servers[0] = start_server(server_settings(model_repo, port=port))
            yield x

    try:
        with VaeClient(f"127.0.0.1:{port}", retries=10, backoff=0.05) as c:
            results = list(c.score(batches(), model=MODEL, max_in_flight=4))
            reference = _scores(c, x)["kl"]
    finally:
        servers[0].stop(grace=0)
    assert [r.index for r in results] == list(range(40))
    np.testing.assert_array_equal(np.concatenate([r.row_ids for r in results]), np.arange(2000))
    for r in results:
        np.testing.assert_array_equal(r.kl, reference)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and server and client certificates it signed (for localhost)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("pki")

    def run(command: str) -> None:
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True, cwd=folder)

    run("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca")
    for name in ("server", "client"):
        run(f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}")
        (folder / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run(
            f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem "
            f"-days 2 -extfile {name}.ext"
        )
    return folder


def test_mutual_tls_and_bearer_token_against_a_secured_server(
    model_repo: Path, pki: Path, digits
) -> None:
    settings = server_settings(
        model_repo,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
        tokens="secret",
        open_health=False,
    )
    server = start_server(settings)
    target = f"localhost:{server.port}"
    tls = {
        "tls_ca": pki / "ca.pem",
        "client_cert": pki / "client.pem",
        "client_key": (pki / "client.key").read_bytes(),
    }
    try:
        with VaeClient(target, token="secret", **tls) as c:
            assert c.health() == "SERVING"
            assert c.model_info(MODEL).input_dim == 64
            (result,) = c.score([digits[0][:10]], model=MODEL)
            assert len(result) == 10
        with VaeClient(target, token="wrong", retries=0, **tls) as c:
            with pytest.raises(VaeClientError) as caught:
                c.model_info(MODEL)
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(VaeClientError) as caught:
                list(c.score([digits[0][:10]], model=MODEL))
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        no_cert = VaeClient(target, token="secret", tls_ca=pki / "ca.pem", retries=0, timeout=5)
        with no_cert as c, pytest.raises(VaeClientError) as caught:
            c.health()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        plaintext = VaeClient(target, token="secret", retries=0, timeout=5)
        with plaintext as c, pytest.raises(VaeClientError):  # plaintext to a TLS port
            c.health()
    finally:
        server.stop(grace=0)
    with pytest.raises(VaeClientError, match="key"):
        VaeClient("localhost:1", client_cert=pki / "client.pem")
    with pytest.raises(VaeClientError, match="cannot read"):
        VaeClient("localhost:1", tls_ca=pki / "missing.pem")


class _Counter(grpc.aio.ServerInterceptor):
    """Counts the calls a server receives."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls += 1
        return await continuation(details)


def test_round_robin_spreads_calls_over_replicas(model_repo: Path, digits) -> None:
    counters = [_Counter(), _Counter()]
    servers = [start_server(server_settings(model_repo), interceptors=[c]) for c in counters]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
        with VaeClient(target, load_balancing="round_robin") as c:
            c.wait_ready()
            for _ in range(20):
                c.encode(digits[0][:2], model=MODEL)
        assert all(k.calls >= 5 for k in counters), [k.calls for k in counters]
        before = [k.calls for k in counters]
        with VaeClient(target, load_balancing="pick_first") as c:
            for _ in range(20):
                c.encode(digits[0][:2], model=MODEL)
        after = [k.calls - b for k, b in zip(counters, before, strict=True)]
        assert sorted(after) == [0, 20]
    finally:
        for s in servers:
            s.stop(grace=0)


def test_dns_target_with_round_robin(server, digits) -> None:
    with VaeClient(f"dns:///localhost:{server.port}", load_balancing="round_robin") as c:
        assert c.encode(digits[0][:2], model=MODEL).mu.shape[0] == 2


def test_client_imports_neither_torch_nor_onnxruntime() -> None:
    code = (
        "import sys\n"
        "import vaeserve.client, vaeserve.client.cli, vaeserve.client.jobs\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
