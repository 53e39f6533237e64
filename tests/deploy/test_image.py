"""The CPU image, built and run for real with podman: a small, non-root, CPU-only image that
serves a read-only model repository over TLS with tokens, reports SERVING on its plaintext
probe port, scores exactly like the server run directly, and exits 0 on SIGTERM.

scripts/image-build.sh builds it with no network inside the build (a Debian base made with
mmdebstrap, a host-side wheelhouse); docs/deploy.md explains the recipe.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.datasets import load_digits

from tests.deploy.conftest import FIGURES
from tests.deploy.podman import ROOT, env, free_port, podman, require_tools
from tests.server.certs import make_pki
from tests.server.conftest import local_settings
from vaeserve.server import start_server

pytestmark = [pytest.mark.container, pytest.mark.slow]

VAE_CLIENT = str(Path(sys.executable).parent / "vae-client")
SCORE_COLUMNS = ("kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly")
SERVING = health_pb2.HealthCheckResponse.SERVING
TOKEN = "container-test-token"


@pytest.fixture(scope="module")
def image() -> str:
    """The CPU image as scripts/image-build.sh builds and tags it (localhost/vaeserve:VERSION-cpu;
    kept afterwards, so a rerun with nothing changed takes seconds)."""
    require_tools()
    t0 = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image-build.sh"), "cpu"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env(),
    )
    assert result.returncode == 0, f"image build failed:\n{result.stderr[-6000:]}"
    FIGURES["cpu image build (this run, base and layers cached or not)"] = (
        f"{time.monotonic() - t0:.0f} s; "
        + next(
            (ln for ln in result.stderr.splitlines() if ln.startswith("image-build:")), ""
        ).removeprefix("image-build: ")
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A folder uid 1000 (or any uid in group 0) can read once mounted: pytest's are 0700."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o755)
    return d


def _readable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def test_image_is_small_non_root_and_cpu_only(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "1000:0"
    assert config["Entrypoint"] == ["/opt/vaeserve/bin/vae-server"]
    assert {"50051/tcp", "50052/tcp", "9100/tcp"} <= set(config["ExposedPorts"])
    envs = dict(e.split("=", 1) for e in config["Env"])
    assert envs["VAESERVE_CONFIG"] == "/etc/vaeserve/config/server.toml"
    printed = podman("run", "--rm", "--network=host", image, "--print-config").stdout
    assert 'model_repo = "/mnt/models"' in printed and "health_port = 50052" in printed
    assert "metrics_port = 9100" in printed and "port = 50051" in printed
    labels = config["Labels"]
    for key in ("title", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["io.vaeserve.flavour"] == "cpu"
    size_mb = info["Size"] / 1e6
    FIGURES["cpu image size"] = f"{size_mb:.0f} MB"
    assert size_mb < 450, f"the CPU image grew to {size_mb:.0f} MB"

    # inside, as an arbitrary uid of group 0 (OpenShift) on a read-only root filesystem
    check = r"""
import importlib.metadata as md, json, os, pathlib, shutil, sys
import onnxruntime as ort
site = pathlib.Path(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                    "site-packages")
print(json.dumps({
    "dists": sorted(d.metadata["Name"].lower() for d in md.distributions()),
    "providers": ort.get_available_providers(),
    "uid": os.getuid(), "gid": os.getgid(),
    "tools": [t for t in ("gcc", "cc", "g++", "make", "pip", "pip3") if shutil.which(t)],
    "tests": [str(p) for p in site.rglob("tests") if p.is_dir()],
    "caches": [str(p) for p in (pathlib.Path.home() / ".cache", pathlib.Path("/tmp/pip"))
               if p.exists()],
}))
"""
    run = podman(
        "run", "--rm", "--network=host", "--read-only", "--user", "1000770000:0",
        "--entrypoint", "/opt/vaeserve/bin/python", image, "-c", check,
    )  # fmt: skip
    found = json.loads(run.stdout)
    assert found["uid"] == 1000770000 and found["gid"] == 0
    assert "onnxruntime" in found["dists"] and "vaeserve" in found["dists"]
    for unwanted in ("onnxruntime-gpu", "torch", "pip", "setuptools", "pyarrow"):
        assert unwanted not in found["dists"], unwanted
    assert not any(d.startswith("nvidia-") for d in found["dists"])
    assert "CUDAExecutionProvider" not in found["providers"]
    assert found["tools"] == [] and found["tests"] == [] and found["caches"] == []
    assert run.stderr.strip() == "", run.stderr  # e.g. no telemetry complaint on a read-only fs


def _health(port: int) -> int | None:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
    except grpc.RpcError:
        return None


def _score(server: str, rows: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    cmd = [VAE_CLIENT, "score", str(rows), "--server", server, "--model", "digits"]
    result = subprocess.run(
        [*cmd, "--output", str(out), "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    return {c: table.column(c).to_numpy() for c in SCORE_COLUMNS}


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"vaeserve-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "-f", name, check=False)


def test_container_serves_like_the_server_run_directly(
    image: str, model_repo: Path, shared_dir: Path, tmp_path: Path, container_name: str
) -> None:
    repo = _readable_copy(model_repo, shared_dir / "models")
    pki = make_pki(tmp_path / "pki")
    tls = shared_dir / "tls"
    tls.mkdir(mode=0o755)
    for src in (pki.server.cert, pki.server.key):
        shutil.copy(src, tls / src.name)
        (tls / src.name).chmod(0o644)
    rows = tmp_path / "rows.npy"
    np.save(rows, load_digits().data[:1000].astype(np.float32))

    port, probe, metrics = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    podman(
        "run", "--detach", "--name", container_name, "--network=host", "--read-only",
        "--volume", f"{repo}:/mnt/models:ro", "--volume", f"{tls}:/etc/vaeserve/tls:ro",
        "--env", "VAESERVE_HOST=127.0.0.1", "--env", f"VAESERVE_PORT={port}",
        "--env", f"VAESERVE_HEALTH_PORT={probe}", "--env", f"VAESERVE_METRICS_PORT={metrics}",
        "--env", f"VAESERVE_TLS_CERT=/etc/vaeserve/tls/{pki.server.cert.name}",
        "--env", f"VAESERVE_TLS_KEY=/etc/vaeserve/tls/{pki.server.key.name}",
        "--env", f"VAESERVE_TOKENS={TOKEN}",
        image,
    )  # fmt: skip
    while _health(probe) != SERVING:
        state = podman("inspect", "--format", "{{.State.Status}}", container_name).stdout.strip()
        logs = podman("logs", container_name, check=False)
        assert state == "running", f"container {state}:\n{logs.stdout}{logs.stderr}"
        assert time.monotonic() - t0 < 60, f"not SERVING after 60 s:\n{logs.stderr}"
        time.sleep(0.05)
    FIGURES["container start to SERVING (podman run to probe answer)"] = (
        f"{time.monotonic() - t0:.2f} s"
    )

    tls_opts = ("--tls-ca", str(pki.ca.cert), "--token", TOKEN)
    in_container = _score(f"localhost:{port}", rows, tmp_path / "container.parquet", *tls_opts)
    with start_server(local_settings(model_repo)) as direct:
        directly = _score(f"127.0.0.1:{direct.port}", rows, tmp_path / "direct.parquet")
    for column in SCORE_COLUMNS:
        np.testing.assert_array_equal(in_container[column], directly[column], err_msg=column)
    FIGURES["scores equal (1000 rows, 5 columns, container vs. direct)"] = "bit for bit"

    # the main port turns away a client without a token
    no_token = subprocess.run(
        [VAE_CLIENT, "info", "--server", f"localhost:{port}", "--tls-ca", str(pki.ca.cert)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_token.returncode != 0 and "UNAUTHENTICATED" in no_token.stderr, no_token.stderr

    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
    assert b"vaeserve_ready 1.0" in page
    assert b'vaeserve_scored_rows_total{model="digits"} 1000.0' in page

    t_stop = time.monotonic()
    podman("stop", "--time", "30", container_name, timeout=60)
    FIGURES["SIGTERM to exit"] = f"{time.monotonic() - t_stop:.2f} s"
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
    logs = podman("logs", container_name).stdout
    assert code == "0", logs
    assert "vae-server stopped" in logs
