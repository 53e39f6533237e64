"""onnxruntime.preload_dlls() before the CUDA probe: silent on stdout (vae-server's stdout
carries its banner), what it reports goes to the debug log, once per process. The CUDA image
test (tests/deploy/test_image.py) checks that it really loads NVIDIA's pip-packaged libraries."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import pytest

from vaeserve.server import cuda_libs
from vaeserve.server.sessions import SessionFactory
from vaeserve.server.settings import ServerSettings

CUDA_BUILD = "CUDAExecutionProvider" in ort.get_available_providers()
# no CUDA libraries from pip packages and no GPU: preloading must fail, quietly
NO_CUDA = (
    not (Path(ort.__file__).parents[1] / "nvidia").is_dir() and not Path("/dev/nvidia0").exists()
)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget that this process already preloaded (another test's server may have)."""
    monkeypatch.setattr(cuda_libs, "_done", False)


def test_preload_is_silent_logs_its_findings_and_runs_once(
    fresh, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=cuda_libs.__name__)
    cuda_libs.preload_cuda_libraries()
    assert capfd.readouterr().out == ""
    first = [r.getMessage() for r in caplog.records]
    if CUDA_BUILD and NO_CUDA:
        assert any("Failed to load libcublasLt" in m for m in first), first
    caplog.clear()
    cuda_libs.preload_cuda_libraries()
    assert caplog.records == []


def test_device_auto_preloads_then_falls_back_to_cpu(fresh, tmp_path: Path) -> None:
    factory = SessionFactory(ServerSettings(model_repo=tmp_path, device="auto"))
    device = factory.resolve_device()
    assert cuda_libs._done is CUDA_BUILD  # preloading only where a CUDA provider exists
    if NO_CUDA:
        assert device == "cpu"


def test_device_cpu_never_preloads(fresh, tmp_path: Path) -> None:
    SessionFactory(ServerSettings(model_repo=tmp_path, device="cpu")).resolve_device()
    assert cuda_libs._done is False
