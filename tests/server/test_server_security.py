"""TLS, mutual TLS and bearer tokens turn the wrong client away and let the right one in; the
stream limits answer RESOURCE_EXHAUSTED naming the setting."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.server.certs import PKI, make_pki
from tests.server.conftest import local_settings
from tests.server.helpers import QueueStream, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.inference import grpc_service_pb2_grpc as kpb_grpc
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server import ServerSettings, ServerStartError, SettingsError, security, start_server

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _rows(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(n, 64)).astype(np.float32)


def _encode(stub: vae_pb2_grpc.VaeServiceStub, **kw: object) -> vae_pb2.EncodeResponse:
    return stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows())), timeout=20, **kw)


def _code(fn, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)
    return exc.value.code()


def _tls_stub(port: int, root: Path, key: Path | None = None, cert: Path | None = None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    return channel, vae_pb2_grpc.VaeServiceStub(channel)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_lets_the_right_client_in(model_repo: Path, pki: PKI) -> None:
    settings = local_settings(model_repo, tls_cert=pki.server.cert, tls_key=pki.server.key)
    with start_server(settings) as server:
        channel, stub = _tls_stub(server.port, pki.ca.cert)
        assert list(_encode(stub).mu.shape) == [3, 8]
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # SERVING
        channel.close()
        plain, plain_stub = stub_for(server.port)  # plaintext client on a TLS port
        assert _code(_encode, plain_stub) == UNAVAILABLE
        plain.close()
        rogue, rogue_stub = _tls_stub(server.port, pki.rogue_ca.cert)  # does not trust us
        assert _code(_encode, rogue_stub) == UNAVAILABLE
        rogue.close()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(model_repo: Path, pki: PKI) -> None:
    settings = local_settings(
        model_repo,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
    )
    with start_server(settings) as server:
        channel, stub = _tls_stub(server.port, pki.ca.cert, pki.client.key, pki.client.cert)
        assert list(_encode(stub).mu.shape) == [3, 8]
        channel.close()
        anonymous, stub = _tls_stub(server.port, pki.ca.cert)
        assert _code(_encode, stub) == UNAVAILABLE
        anonymous.close()
        rogue, stub = _tls_stub(
            server.port, pki.ca.cert, pki.rogue_client.key, pki.rogue_client.cert
        )
        assert _code(_encode, stub) == UNAVAILABLE
        rogue.close()


def test_bearer_tokens_from_file_and_environment(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(security, "TOKEN_RECHECK_S", 0.0)
    token_file = tmp_path / "tokens"
    token_file.write_text("# service accounts\nfile-token-1\n\n  file-token-2  # ci\n")
    base = local_settings(model_repo).redacted()
    del base["tokens"], base["token_file"]
    settings = ServerSettings.load(
        env={"VAESERVE_TOKENS": "env-token-1, env-token-2"}, **base, token_file=token_file
    )
    assert settings.token_auth and "env-token" not in repr(settings)
    caplog.set_level(logging.INFO)
    with start_server(settings) as server:
        channel, stub = stub_for(server.port)
        assert _code(_encode, stub) == UNAUTHENTICATED
        for bad in ("Bearer wrong-token-xyz", "Basic ZmlsZS10b2tlbi0x", "Bearer", "file-token-1"):
            assert _code(_encode, stub, metadata=(("authorization", bad),)) == UNAUTHENTICATED
        for good in ("file-token-1", "file-token-2", "env-token-1", "env-token-2"):
            _encode(stub, metadata=(("authorization", f"Bearer {good}"),))
        _encode(stub, metadata=(("authorization", "bearer   env-token-2"),))  # scheme any case
        # health stays open for probes; reflection and KServe do not
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="digits")).status == 1
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        assert _code(lambda: list(refl.ServerReflectionInfo(iter([req])))) == UNAUTHENTICATED
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        assert _code(kstub.ServerLive, kpb.ServerLiveRequest()) == UNAUTHENTICATED
        assert kstub.ServerLive(
            kpb.ServerLiveRequest(), metadata=(("authorization", "Bearer file-token-2"),)
        ).live
        # the token file is re-read when it changes
        token_file.write_text("rotated-token\n")
        _encode(stub, metadata=(("authorization", "Bearer rotated-token"),))
        assert (
            _code(_encode, stub, metadata=(("authorization", "Bearer file-token-1"),))
            == UNAUTHENTICATED
        )
        _encode(stub, metadata=(("authorization", "Bearer env-token-1"),))  # env still counts
        failures = server.metrics.auth_failures
        assert failures.labels("missing")._value.get() >= 3
        channel.close()
    text = caplog.text
    assert "unauthenticated call to /vae.v1.VaeService/Encode from ipv4:127.0.0.1" in text
    for secret in ("wrong-token-xyz", "ZmlsZS10b2tlbi0x", "env-token", "file-token"):
        assert secret not in text


def test_health_can_require_a_token(model_repo: Path) -> None:
    settings = local_settings(model_repo, tokens="t0k3n", open_health=False)
    with start_server(settings) as server:
        channel, _ = stub_for(server.port)
        health = health_pb2_grpc.HealthStub(channel)
        assert _code(health.Check, health_pb2.HealthCheckRequest()) == UNAUTHENTICATED
        ok = health.Check(
            health_pb2.HealthCheckRequest(), metadata=(("authorization", "Bearer t0k3n"),)
        )
        assert ok.status == 1
        channel.close()


def test_security_settings_are_checked(model_repo: Path, tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(SettingsError, match="tls_cert and tls_key go together"):
        local_settings(model_repo, tls_cert=pki.server.cert)
    with pytest.raises(SettingsError, match=r"tls_client_ca .* needs TLS"):
        local_settings(model_repo, tls_client_ca=pki.ca.cert)
    missing = tmp_path / "nope.pem"
    with pytest.raises(ServerStartError, match=r"tls_key .*nope\.pem does not exist"):
        start_server(local_settings(model_repo, tls_cert=pki.server.cert, tls_key=missing))
    empty = tmp_path / "empty-tokens"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ServerStartError, match="token auth is on but no token"):
        start_server(local_settings(model_repo, token_file=empty))
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82")
    with pytest.raises(ServerStartError, match="PEM"):
        start_server(local_settings(model_repo, tls_cert=not_pem, tls_key=pki.server.key))


def test_max_streams_counts_both_protocols(model_repo: Path) -> None:
    with start_server(local_settings(model_repo, max_streams=1)) as server:
        channel, stub = stub_for(server.port)
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        feed = QueueStream()
        first = stub.Score(iter(feed))
        feed.put(vae_pb2.ScoreRequest(batch_id="a", rows=to_tensor(_rows())))
        assert next(first).batch_id == "a"  # the first stream is open
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(_rows()))])))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(setting max_streams)" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            list(kstub.ModelStreamInfer(iter([kpb.ModelInferRequest(model_name="digits")])))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        _encode(stub)  # unary calls are not streams
        feed.close()
        assert list(first) == []
        (resp,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(_rows()))]))
        assert not resp.HasField("error")  # a slot is free again
        assert server.metrics.limit_rejections.labels("max_streams")._value.get() == 2
        channel.close()


def test_score_stream_inflight_rows_limit_is_in_band(model_repo: Path) -> None:
    with start_server(local_settings(model_repo, max_stream_inflight_rows=10)) as server:
        channel, stub = stub_for(server.port)
        reqs = [
            vae_pb2.ScoreRequest(batch_id="big", rows=to_tensor(_rows(11))),
            vae_pb2.ScoreRequest(batch_id="ok", rows=to_tensor(_rows(10))),
        ]
        big, ok = stub.Score(iter(reqs))
        assert (
            big.batch_id == "big" and big.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        )
        assert "(setting max_stream_inflight_rows)" in big.error.message
        assert ok.batch_id == "ok" and not ok.HasField("error")
        channel.close()
