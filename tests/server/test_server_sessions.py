"""onnxruntime sessions: device resolution, options, and the IO-binding path used on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vaeserve.server import DeviceError, ServerSettings
from vaeserve.server.sessions import CPU, CUDA, SessionFactory, cuda_failure_reason


def _cuda_loads() -> bool:
    return SessionFactory(ServerSettings(model_repo=".", device="auto")).resolve_device() == "cuda"


def test_cpu_factory_runs_graphs_on_cpu(synth_repo: Path) -> None:
    factory = SessionFactory(ServerSettings(model_repo=synth_repo, device="cpu"))
    runner = factory.create(synth_repo / "plain" / "1" / "encoder.onnx")
    assert factory.device == "cpu" and runner.providers == [CPU] and not runner.use_io_binding
    assert runner.name == "encoder" and runner.output_names == ["mu", "logvar"]
    out = runner.run({"x": np.zeros((3, 12), np.float32)})
    assert out["mu"].shape == (3, 3)


def test_io_binding_path_gives_the_same_outputs(synth_repo: Path) -> None:
    # On CUDA the runner binds inputs and outputs; the same calls work on a CPU session,
    # which lets this path be checked without a GPU.
    factory = SessionFactory(ServerSettings(model_repo=synth_repo, device="cpu"))
    runner = factory.create(synth_repo / "plain" / "1" / "scorer.onnx")
    x = np.random.default_rng(0).normal(size=(17, 12)).astype(np.float32)
    plain = runner.run({"x": x})
    runner.use_io_binding = True
    bound = runner.run({"x": x})
    for k in plain:
        np.testing.assert_array_equal(plain[k], bound[k])


def test_auto_uses_what_really_loads() -> None:
    factory = SessionFactory(ServerSettings(model_repo=".", device="auto"))
    device = factory.resolve_device()
    assert device in ("cuda", "cpu")
    if CUDA not in ort.get_available_providers():
        assert device == "cpu"


def test_cuda_request_fails_with_the_reason() -> None:
    if _cuda_loads():
        pytest.skip("CUDA works here")
    factory = SessionFactory(ServerSettings(model_repo=".", device="cuda"))
    with pytest.raises(DeviceError) as exc:
        factory.resolve_device()
    assert cuda_failure_reason() in str(exc.value)


def test_session_options_follow_settings(synth_repo: Path) -> None:
    settings = ServerSettings(
        model_repo=synth_repo, device="cpu", intra_op_threads=1, graph_optimization="basic"
    )
    so = SessionFactory(settings)._options()
    assert so.intra_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
