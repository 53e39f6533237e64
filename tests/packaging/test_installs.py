"""Installs that hold: a client-only install (`vaeserve[client]`, in a fresh virtual
environment) has all four console scripts, and the three whose extra is missing say in one
line what to install; adding `vaeserve[serve-cpu]` gives a working server on the CPU-only
onnxruntime (never onnxruntime-gpu) that the client reaches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("common", "training", "export", "server", "client", "proto")
INSTALL_TIMEOUT_S = 900


def _source_copy(target: Path) -> Path:
    """The files a wheel is built from, copied so the build leaves the checkout untouched."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGE_DIRS:
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    return target


def _run(*cmd: str | Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def _pip_install(bin_dir: Path, *args: str) -> None:
    result = _run(
        bin_dir / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", *args,
        timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _installed(bin_dir: Path) -> set[str]:
    out = _run(bin_dir / "python", "-m", "pip", "list", "--format=freeze").stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if "==" in line}


def _one_line_refusal(bin_dir: Path, script: str, extra: str) -> None:
    result = _run(bin_dir / script, "--help")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (script, result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{script} needs the {extra} extra" in lines[0]
    assert f"pip install 'vaeserve[{extra}]'" in lines[0]


@pytest.mark.slow
def test_client_only_install_then_serve_cpu(tmp_path: Path, model_repo: Path) -> None:
    src = _source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    bin_dir = venv / "bin"
    _pip_install(bin_dir, f"{src}[client]")
    installed = _installed(bin_dir)
    assert "grpcio" in installed and "pyarrow" in installed
    assert not {"torch", "onnxruntime", "onnxruntime-gpu", "onnx"} & installed
    # the .proto files travel in the wheel, for clients in other languages (docs/server.md)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for proto in ("vae/v1/vae.proto", "inference/grpc_service.proto"):
        assert (site / "vaeserve" / "proto" / proto).is_file(), proto

    for script, extra in (("vae-train", "train"), ("vae-export", "train"), ("vae-server", "serve")):
        _one_line_refusal(bin_dir, script, extra)
    assert "serve-cpu" in _run(bin_dir / "vae-server", "--help").stderr
    client_help = _run(bin_dir / "vae-client", "--help")
    assert client_help.returncode == 0 and "score" in client_help.stdout

    _pip_install(bin_dir, f"{src}[serve-cpu]")
    installed = _installed(bin_dir)
    assert "onnxruntime" in installed and "onnxruntime-gpu" not in installed
    assert "torch" not in installed
    _one_line_refusal(bin_dir, "vae-train", "train")
    server = subprocess.Popen(
        [str(bin_dir / "vae-server"), "--model-repo", str(model_repo), "--host", "127.0.0.1",
         "--port", "0", "--device", "cpu", "--poll-interval-s", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        port = _bound_port(server)
        health = _run(bin_dir / "vae-client", "health", "--server", f"127.0.0.1:{port}")
        assert health.returncode == 0 and "SERVING" in health.stdout, health
        info = _run(
            bin_dir / "vae-client", "info", "--model", "digits", "--json",
            "--server", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert info.returncode == 0 and "CPUExecutionProvider" in info.stdout, info
    finally:
        server.terminate()
        server.wait(30)


def _bound_port(proc: subprocess.Popen, timeout: float = 120) -> int:
    """The port from vae-server's 'listening on 127.0.0.1:PORT' line."""
    found: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                found.append(int(m.group(1)))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"vae-server did not start (rc {proc.poll()})"
    return found[0]
