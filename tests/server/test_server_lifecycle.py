"""Start, stop, SIGTERM, new versions without restart, start-up errors, the CLI, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.conftest import local_settings
from tests.server.helpers import (
    TOL,
    QueueStream,
    ServerProcess,
    arr,
    ref,
    run_cli,
    stub_for,
)
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import (
    DeviceError,
    ServerSettings,
    ServerStartError,
    VaeServer,
    start_server,
)
from vaeserve.server.repository import ModelRepository
from vaeserve.server.sessions import SessionFactory

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 64)).astype(np.float32)


def _wait_for(pred, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _watch_health(channel: grpc.Channel, service: str = ""):
    """Start a health Watch; returns (call, list of statuses filled by a thread)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
    seen: list[int] = []

    def pump() -> None:
        try:
            for r in call:
                seen.append(r.status)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    return call, seen


def _stream_across_stop(stub, stop_begins, check_stopping) -> list:
    """3 batches, then stop_begins(), then 3 more batches on the same stream: 6 answers."""
    feed = QueueStream()
    call = stub.Score(iter(feed))
    for i in range(3):
        feed.put(vae_pb2.ScoreRequest(batch_id=f"a{i}", rows=to_tensor(_rows(16, i))))
    got = [next(call) for _ in range(3)]
    stop_begins()
    _wait_for(check_stopping, what="shutdown to begin")
    for i in range(3):
        feed.put(vae_pb2.ScoreRequest(batch_id=f"b{i}", rows=to_tensor(_rows(16, 10 + i))))
    feed.close()
    got.extend(call)
    return got


def test_start_server_api(model_repo: Path) -> None:
    server = start_server(
        ServerSettings(model_repo=model_repo, host="127.0.0.1", port=0, device="cpu")
    )
    assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    assert server.device == "cpu" and server.providers == ["CPUExecutionProvider"]
    channel, stub = stub_for(server.port)
    assert stub.ListModels(vae_pb2.ListModelsRequest()).models[0].name == "digits"
    server.stop(grace=5.0)
    server.stop(grace=5.0)  # harmless twice
    with pytest.raises(grpc.RpcError) as exc:
        stub.ListModels(vae_pb2.ListModelsRequest(), timeout=2)
    assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    channel.close()


def test_graceful_stop_finishes_in_flight_stream(model_repo: Path, digits_ref) -> None:
    server = start_server(local_settings(model_repo))
    channel, stub = stub_for(server.port)
    watch, seen = _watch_health(channel)
    _wait_for(lambda: seen == [SERVING], what="health SERVING")
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
    got = _stream_across_stop(
        stub, stopper.start, lambda: NOT_SERVING in seen and server.app.stopping
    )
    assert [r.batch_id for r in got] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert not any(r.HasField("error") for r in got)
    want = digits_ref.run("scorer", x=_rows(16, 12))["kl"]
    np.testing.assert_allclose(arr(got[-1].kl), want, **TOL)
    # new calls are refused while shutting down
    with pytest.raises(grpc.RpcError):
        stub.ListModels(vae_pb2.ListModelsRequest(), timeout=2)
    watch.cancel()
    stopper.join(35)
    assert not stopper.is_alive()
    channel.close()


@pytest.mark.slow
def test_sigterm_during_stream_loses_no_response(model_repo: Path) -> None:
    with ServerProcess("--model-repo", str(model_repo), "--grace-s", "30") as proc:
        channel, stub = stub_for(proc.port)
        watch, seen = _watch_health(channel)
        _wait_for(lambda: seen == [SERVING], what="health SERVING")
        got = _stream_across_stop(stub, proc.terminate, lambda: NOT_SERVING in seen)
        assert [r.batch_id for r in got] == ["a0", "a1", "a2", "b0", "b1", "b2"]
        assert not any(r.HasField("error") for r in got)
        watch.cancel()
        assert proc.wait(timeout=40) == 0
        assert any("vae-server stopped" in line for line in proc.lines)
        channel.close()


@pytest.mark.slow
def test_sigterm_exits_within_grace_when_a_stream_never_ends(model_repo: Path) -> None:
    with ServerProcess("--model-repo", str(model_repo), "--grace-s", "1") as proc:
        channel, stub = stub_for(proc.port)
        feed = QueueStream()
        call = stub.Score(iter(feed))
        feed.put(vae_pb2.ScoreRequest(batch_id="0", rows=to_tensor(_rows(4))))
        assert next(call).batch_id == "0"
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # the open stream is cut after the grace period
        with pytest.raises(grpc.RpcError):
            next(call)
        feed.close()
        channel.close()


@pytest.mark.slow
def test_cli_subprocess_settings_env_config_and_rpcs(
    fresh_repo: Path, tmp_path: Path, digits_ref
) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[server]\nmax_iw_samples = 2\nmax_request_rows = 100\n")
    env = {"VAESERVE_MAX_REQUEST_ROWS": "5", "VAESERVE_CONFIG": "", "VAESERVE_LOG_LEVEL": "info"}
    with ServerProcess(
        "--model-repo",
        str(fresh_repo),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--poll-interval-s",
        "0.2",
        env=env,
    ) as proc:
        assert "device cpu" in proc.banner and "CPUExecutionProvider" in proc.banner
        assert "digits (version 1)" in proc.banner
        channel, stub = stub_for(proc.port)
        x = _rows(5)
        resp = stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(x)))
        np.testing.assert_allclose(arr(resp.mu), digits_ref.run("encoder", x=x)["mu"], **TOL)
        with pytest.raises(grpc.RpcError) as exc:  # env (5) beats the config file (100)
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(6))))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (sc,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(x), iw_samples=3)]))
        assert "limit of 2" in sc.error.message  # from the config file
        # a new version is picked up by the running process
        shutil.copytree(fresh_repo / "digits" / "1", fresh_repo / "digits" / "2")
        _wait_for(
            lambda: list(stub.ListModels(vae_pb2.ListModelsRequest()).models[0].versions) == [1, 2],
            what="version 2 to load",
        )
        assert stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(x))).model.version == 2
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        channel.close()
    assert any("providers" in line or "CPUExecutionProvider" in line for line in proc.stderr_lines)


def test_new_version_appears_without_restart(fresh_repo: Path) -> None:
    server = start_server(local_settings(fresh_repo, poll_interval_s=0.2))
    try:
        channel, stub = stub_for(server.port)
        health = health_pb2_grpc.HealthStub(channel)
        feed = QueueStream()
        stream = stub.Score(iter(feed))
        feed.put(vae_pb2.ScoreRequest(model=ref("digits"), batch_id="s0", rows=to_tensor(_rows(4))))
        assert next(stream).model.version == 1

        shutil.copytree(fresh_repo / "digits" / "1", fresh_repo / "digits" / "2")

        def has_v2() -> bool:
            resp = stub.ListModels(vae_pb2.ListModelsRequest())
            return list(resp.models[0].versions) == [1, 2]

        _wait_for(has_v2, what="version 2 to be picked up")
        assert stub.ListModels(vae_pb2.ListModelsRequest()).models[0].latest == 2
        check = health.Check(health_pb2.HealthCheckRequest(service="digits/2"))
        assert check.status == SERVING
        x = _rows(3)
        assert stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(x))).model.version == 2
        pinned = stub.Encode(vae_pb2.EncodeRequest(model=ref("digits", 1), rows=to_tensor(x)))
        assert pinned.model.version == 1
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest(model=ref("digits")))
        assert info.model.version == 2 and list(info.versions) == [1, 2]

        # the stream opened before keeps its version and is not dropped
        feed.put(vae_pb2.ScoreRequest(batch_id="s1", rows=to_tensor(_rows(4))))
        resp = next(stream)
        assert resp.batch_id == "s1" and resp.model.version == 1 and not resp.HasField("error")

        # a version whose folder goes away is unloaded; streams using it still finish
        shutil.rmtree(fresh_repo / "digits" / "1")
        _wait_for(
            lambda: list(stub.ListModels(vae_pb2.ListModelsRequest()).models[0].versions) == [2],
            what="version 1 to be unloaded",
        )
        check = health.Check(health_pb2.HealthCheckRequest(service="digits/1"))
        assert check.status == NOT_SERVING
        feed.put(vae_pb2.ScoreRequest(batch_id="s2", rows=to_tensor(_rows(4))))
        feed.close()
        (last,) = list(stream)
        assert last.model.version == 1 and not last.HasField("error")
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_broken_version_is_skipped_then_loaded_when_fixed(fresh_repo: Path) -> None:
    server = start_server(local_settings(fresh_repo))
    try:
        v3 = fresh_repo / "digits" / "3"
        shutil.copytree(fresh_repo / "digits" / "1", v3)
        good = (v3 / "encoder.onnx").read_bytes()
        (v3 / "encoder.onnx").write_bytes(good[:-10])
        result = server.rescan()
        assert result.added == [] and len(result.failed) == 1
        assert "sha256" in result.failed[0][1]
        assert server.rescan().failed == []  # unchanged files are not retried
        channel, stub = stub_for(server.port)
        assert stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1)))).model.version == 1
        (v3 / "encoder.onnx").write_bytes(good)
        assert server.rescan().added == [("digits", 3)]
        assert stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1)))).model.version == 3
        channel.close()
    finally:
        server.stop(grace=1.0)


def _cuda_works() -> bool:
    try:
        return SessionFactory(ServerSettings(model_repo=".", device="auto")).resolve_device() == (
            "cuda"
        )
    except Exception:
        return False


def test_device_cuda_fails_clearly_without_cuda(model_repo: Path) -> None:
    if _cuda_works():
        pytest.skip("CUDA works here; the failure path cannot be shown")
    with pytest.raises(DeviceError, match="device 'cuda' was requested") as exc:
        start_server(local_settings(model_repo, device="cuda"))
    assert "--device auto or cpu" in str(exc.value)
    result = run_cli("--model-repo", str(model_repo), "--device", "cuda", "--port", "0")
    assert result.returncode == 2
    assert "device 'cuda' was requested" in result.stderr


@pytest.mark.gpu
def test_device_cuda_runs_on_cuda(model_repo: Path, digits_ref) -> None:
    if not _cuda_works():
        pytest.skip("no working CUDA execution provider")
    server = start_server(local_settings(model_repo, device="cuda"))
    try:
        channel, stub = stub_for(server.port)
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest())
        assert info.device == "cuda" and info.providers[0] == "CUDAExecutionProvider"
        x = _rows(8)
        (sc,) = stub.Score(iter([vae_pb2.ScoreRequest(rows=to_tensor(x))]))
        np.testing.assert_allclose(
            arr(sc.kl), digits_ref.run("scorer", x=x)["kl"], rtol=1e-3, atol=1e-3
        )
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_device_auto_reports_what_really_runs(model_repo: Path) -> None:
    server = start_server(local_settings(model_repo, device="auto"))
    try:
        channel, stub = stub_for(server.port)
        info = stub.ModelInfo(vae_pb2.ModelInfoRequest())
        expect = "cuda" if _cuda_works() else "cpu"
        assert info.device == expect == server.device
        assert ("CUDAExecutionProvider" in info.providers) == (expect == "cuda")
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_port_in_use_and_missing_repo(model_repo: Path, tmp_path: Path) -> None:
    first = start_server(local_settings(model_repo))
    try:
        with pytest.raises(ServerStartError, match="cannot listen"):
            start_server(local_settings(model_repo, port=first.port))
    finally:
        first.stop(grace=1.0)
    with pytest.raises(ServerStartError, match="not a directory"):
        start_server(local_settings(tmp_path / "nowhere"))


def test_empty_repository_serves_and_picks_up_a_model(tmp_path: Path, model_repo: Path) -> None:
    server = start_server(local_settings(tmp_path))
    try:
        channel, stub = stub_for(server.port)
        assert list(stub.ListModels(vae_pb2.ListModelsRequest()).models) == []
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(_rows(1))))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        shutil.copytree(model_repo / "digits", tmp_path / "digits")
        assert server.rescan().added == [("digits", 1)]
        stub.Encode(vae_pb2.EncodeRequest(model=ref("digits"), rows=to_tensor(_rows(1))))
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_cli_usage_errors(tmp_path: Path) -> None:
    result = run_cli("--port", "0", env={"VAESERVE_MODEL_REPO": ""})
    assert result.returncode == 2 and "VAESERVE_MODEL_REPO" in result.stderr
    result = run_cli("--model-repo", str(tmp_path), env={"VAESERVE_PORT": "http"})
    assert result.returncode == 2 and "VAESERVE_PORT" in result.stderr
    result = run_cli("--model-repo", str(tmp_path / "none"), "--port", "0")
    assert result.returncode == 2 and "not a directory" in result.stderr
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"prot": 1}))
    result = run_cli("--model-repo", str(tmp_path), "--config", str(bad))
    assert result.returncode == 2 and "unknown setting(s) prot" in result.stderr


def test_server_never_imports_torch(model_repo: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import vaeserve.server, vaeserve.server.app, vaeserve.server.batching
        import vaeserve.server.cli, vaeserve.server.errors, vaeserve.server.repository
        import vaeserve.server.servicer, vaeserve.server.sessions, vaeserve.server.settings
        import vaeserve.server.kserve, vaeserve.server.dataplane, vaeserve.server.security
        import vaeserve.server.call_context, vaeserve.server.metrics, vaeserve.server.logs
        import vaeserve.server.layers, vaeserve.server.interception, vaeserve.server.rpc
        import vaeserve.server.validation, vaeserve.server.background
        from vaeserve.server import ServerSettings, start_server
        from vaeserve.common.tensors import to_tensor
        from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
        import grpc
        s = start_server(ServerSettings(model_repo={str(model_repo)!r}, host="127.0.0.1",
                                        port=0, device="cpu"))
        stub = vae_pb2_grpc.VaeServiceStub(grpc.insecure_channel(f"127.0.0.1:{{s.port}}"))
        rows = to_tensor(np.zeros((2, 64), np.float32))
        list(stub.Score(iter([vae_pb2.ScoreRequest(rows=rows, iw_samples=2)])))
        s.stop(1.0)
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not bad, bad
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_health_not_serving_until_models_are_warm(model_repo: Path, monkeypatch) -> None:
    release = threading.Event()
    scan = ModelRepository.scan

    def slow_scan(self, strict: bool = False):  # type: ignore[no-untyped-def]
        assert release.wait(60)
        return scan(self, strict)

    monkeypatch.setattr(ModelRepository, "scan", slow_scan)
    server = VaeServer(local_settings(model_repo))
    starter = threading.Thread(target=server._start)
    starter.start()
    try:
        _wait_for(lambda: server.app.port > 0, what="the port to be bound")
        channel, stub = stub_for(server.app.port)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "vae.v1.VaeService"):
            check = health.Check(health_pb2.HealthCheckRequest(service=name), wait_for_ready=True)
            assert check.status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1))))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "starting" in exc.value.details()
        release.set()
        starter.join(60)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="digits/1")).status == SERVING
        stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(_rows(1))))
        channel.close()
    finally:
        release.set()
        starter.join(60)
        server.stop(grace=1.0)
