"""The plaintext health-only port (health_port): probes get the main server's statuses while
the main port requires mutual TLS and tokens, and nothing but grpc.health.v1 is reachable."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.server.certs import make_pki
from tests.server.conftest import local_settings
from tests.server.helpers import QueueStream, ServerProcess, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import SettingsError, VaeServer, start_server
from vaeserve.server.probe_port import ProbePortError
from vaeserve.server.repository import ModelRepository

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(n, 64)).astype(np.float32)


def _status(port: int, service: str = "", timeout: float = 10) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        return health.Check(request, timeout=timeout, wait_for_ready=True).status


def _wait_for(pred, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_plaintext_probe_answers_while_main_port_needs_mtls_and_tokens(
    model_repo: Path, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = local_settings(
        model_repo,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
        tokens="s3cret",
        open_health=False,
        health_port=free_port(),
    )
    with start_server(settings) as server:
        probe = settings.health_port
        assert server.app.probe_port.port == probe
        for service in ("", "vae.v1.VaeService", "inference.GRPCInferenceService", "digits"):
            assert _status(probe, service) == SERVING, service
        assert _status(probe, "digits/1") == SERVING
        with pytest.raises(grpc.RpcError) as exc:
            _status(probe, "no-such-model")
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND

        # the same plaintext health call on the main port fails: it needs TLS and a client cert
        with pytest.raises(grpc.RpcError) as exc:
            _status(server.port, timeout=3)
        assert exc.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )

        # the probe port carries no model service and no reflection
        channel, stub = stub_for(probe)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(2))), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as exc:
            list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        channel.close()
    with pytest.raises(grpc.RpcError) as exc:  # stopped with the main server
        _status(probe, timeout=2)
    assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_not_serving_while_models_load_then_serving(model_repo: Path, monkeypatch) -> None:
    release = threading.Event()
    scan = ModelRepository.scan

    def slow_scan(self, strict: bool = False):  # type: ignore[no-untyped-def]
        assert release.wait(60)
        return scan(self, strict)

    monkeypatch.setattr(ModelRepository, "scan", slow_scan)
    server = VaeServer(local_settings(model_repo, health_port=free_port()))
    probe = server.settings.health_port
    starter = threading.Thread(target=server._start)
    starter.start()
    try:
        _wait_for(lambda: server.app.probe_port.port == probe, what="the probe port")
        assert _status(probe) == NOT_SERVING
        assert _status(probe, "vae.v1.VaeService") == NOT_SERVING
        release.set()
        starter.join(60)
        assert _status(probe) == SERVING
        assert _status(probe, "digits") == SERVING
    finally:
        release.set()
        starter.join(60)
        server.stop(grace=1.0)


def test_not_serving_while_draining_then_closed(model_repo: Path) -> None:
    server = start_server(local_settings(model_repo, health_port=free_port()))
    probe = server.settings.health_port
    channel, stub = stub_for(server.port)
    feed = QueueStream()
    call = stub.Score(iter(feed))
    feed.put(vae_pb2.ScoreRequest(batch_id="a", rows=to_tensor(_rows(8))))
    assert next(call).batch_id == "a"
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
    stopper.start()
    try:
        # the open stream holds the drain; the probe port still answers, NOT_SERVING
        _wait_for(lambda: _status(probe) == NOT_SERVING, what="NOT_SERVING while draining")
        assert _status(probe, "digits") == NOT_SERVING
        assert stopper.is_alive()
    finally:
        feed.close()
        list(call)
        stopper.join(60)
        channel.close()
    with pytest.raises(grpc.RpcError):
        _status(probe, timeout=2)


def test_port_in_use_fails_start_and_frees_the_main_port(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        main = free_port()
        with pytest.raises(ProbePortError, match=f"health port 127.0.0.1:{busy}"):
            start_server(local_settings(model_repo, port=main, health_port=busy))
    with socket.socket() as again:  # the main port was released
        again.bind(("127.0.0.1", main))


def test_settings_reject_a_shared_port(model_repo: Path) -> None:
    with pytest.raises(SettingsError, match="health_port 50051 is also port"):
        local_settings(model_repo, port=50051, health_port=50051)
    with pytest.raises(SettingsError, match="health_port"):
        local_settings(model_repo, health_port=70000)


def test_cli_env_health_port_with_tls(model_repo: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    probe = free_port()
    env = {
        "VAESERVE_MODEL_REPO": str(model_repo),
        "VAESERVE_DEVICE": "cpu",
        "VAESERVE_TLS_CERT": str(pki.server.cert),
        "VAESERVE_TLS_KEY": str(pki.server.key),
        "VAESERVE_HEALTH_PORT": str(probe),
        "VAESERVE_HEALTH_HOST": "127.0.0.1",
    }
    with ServerProcess(env=env) as proc:
        assert _status(probe) == SERVING
        proc.terminate()
        assert proc.wait(30) == 0
