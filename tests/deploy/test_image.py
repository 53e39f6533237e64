"""The CPU image, built and run for real with podman: a small, non-root, CPU-only image that
serves a read-only model repository over TLS with tokens, reports SERVING on its plaintext
probe port, scores exactly like the server run directly, and exits 0 on SIGTERM.

scripts/image-build.sh builds it with no network inside the build (a Debian base made with
mmdebstrap, a host-side wheelhouse); docs/deploy.md explains the recipe.
"""

from __future__ import annotations

import json
import os
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


def build(flavour: str) -> str:
    """The image as scripts/image-build.sh builds and tags it (localhost/vaeserve:VERSION-FLAVOUR;
    kept afterwards, so a rerun with nothing changed takes seconds)."""
    require_tools()
    t0 = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image-build.sh"), flavour],
        capture_output=True,
        text=True,
        timeout=3600,
        env=env(),
    )
    assert result.returncode == 0, f"image build failed:\n{result.stderr[-6000:]}"
    steps = [ln for ln in result.stderr.splitlines() if ln.startswith("image-build:")]
    FIGURES[f"{flavour} image build (this run; base, wheels, layers cached or not)"] = (
        f"{time.monotonic() - t0:.0f} s; "
        + (steps[-1].removeprefix("image-build: ") if steps else "")
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def image() -> str:
    """The CPU image."""
    return build("cpu")


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


def start(image: str, name: str, mounts: dict[Path, str], settings: dict[str, str]) -> float:
    """`podman run` the image on the host network with read-only mounts and VAESERVE_* settings;
    returns the seconds until its probe port (VAESERVE_HEALTH_PORT) answers SERVING."""
    args = ["run", "--detach", "--name", name, "--network=host", "--read-only"]
    for host, inside in mounts.items():
        args += ["--volume", f"{host}:{inside}:ro"]
    for key, value in settings.items():
        args += ["--env", f"VAESERVE_{key}={value}"]
    t0 = time.monotonic()
    podman(*args, image)
    probe = int(settings["HEALTH_PORT"])
    while _health(probe) != SERVING:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        logs = podman("logs", name, check=False)
        assert state == "running", f"container {state}:\n{logs.stdout}{logs.stderr}"
        assert time.monotonic() - t0 < 60, f"not SERVING after 60 s:\n{logs.stderr}"
        time.sleep(0.05)
    return time.monotonic() - t0


def stop(name: str) -> float:
    """`podman stop` (SIGTERM); asserts exit code 0 after the drain; returns its seconds."""
    t0 = time.monotonic()
    podman("stop", "--time", "30", name, timeout=60)
    seconds = time.monotonic() - t0
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    logs = podman("logs", name).stdout
    assert code == "0", logs
    assert "vae-server stopped" in logs
    return seconds


def digits_rows(path: Path, n: int = 1000) -> Path:
    """n rows of scikit-learn's digits as an NPY file."""
    np.save(path, load_digits().data[:n].astype(np.float32))
    return path


def direct_scores(model_repo: Path, rows: Path, out: Path) -> dict[str, np.ndarray]:
    """The same rows scored by vae-server run in this process (no container)."""
    with start_server(local_settings(model_repo)) as direct:
        return _score(f"127.0.0.1:{direct.port}", rows, out)


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
    rows = digits_rows(tmp_path / "rows.npy")

    port, probe, metrics = free_port(), free_port(), free_port()
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "HEALTH_PORT": str(probe),
        "METRICS_PORT": str(metrics),
        "TLS_CERT": f"/etc/vaeserve/tls/{pki.server.cert.name}",
        "TLS_KEY": f"/etc/vaeserve/tls/{pki.server.key.name}",
        "TOKENS": TOKEN,
    }
    mounts = {repo: "/mnt/models", tls: "/etc/vaeserve/tls"}
    seconds = start(image, container_name, mounts, settings)
    FIGURES["container start to SERVING (podman run to probe answer)"] = f"{seconds:.2f} s"

    tls_opts = ("--tls-ca", str(pki.ca.cert), "--token", TOKEN)
    in_container = _score(f"localhost:{port}", rows, tmp_path / "container.parquet", *tls_opts)
    directly = direct_scores(model_repo, rows, tmp_path / "direct.parquet")
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

    FIGURES["SIGTERM to exit 0"] = f"{stop(container_name):.2f} s"


CUDA_OPT_IN = "VAESERVE_IMAGE_TEST_CUDA"
# the libraries onnxruntime-gpu's CUDA provider needs, as NVIDIA's pip packages ship them
CUDA_LIBS = {
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcudart.so.13",
    "libcudnn.so.9",
    "libcufft.so.12",
    "libcurand.so.10",
    "libnvrtc.so.13",
}


@pytest.mark.skipif(
    os.environ.get(CUDA_OPT_IN) != "1",
    reason=f"the CUDA image (1.6 GB of wheels, 2.8 GB image, ~10 min on 2 cores) is built "
    f"only with {CUDA_OPT_IN}=1",
)
def test_cuda_image_brings_its_cuda_libraries(
    model_repo: Path, shared_dir: Path, tmp_path: Path, container_name: str
) -> None:
    """The CUDA image: onnxruntime-gpu, and every CUDA/cuDNN library its provider needs loaded
    from the pip packages by preload_dlls(); without a GPU only the driver (libcuda.so.1, which
    the NVIDIA container toolkit mounts) is missing, and the server scores on CPU."""
    image = build("cuda")
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    assert info["Config"]["User"] == "1000:0"
    FIGURES["cuda image size"] = f"{info['Size'] / 1e6:.0f} MB"
    check = r"""
import ctypes, importlib.metadata as md, json, pathlib, re
import onnxruntime as ort
from vaeserve.server.cuda_libs import preload_cuda_libraries
preload_cuda_libraries()
maps = open("/proc/self/maps").read()
lib = pathlib.Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
try:
    ctypes.CDLL(str(lib))
    provider = "loads"
except OSError as exc:
    provider = str(exc)
print(json.dumps({
    "dists": sorted(d.metadata["Name"].lower() for d in md.distributions()),
    "loaded": sorted({m.rsplit("/", 1)[1] for m in re.findall(r"/\S+/nvidia/\S+", maps)}),
    "provider": provider,
    "providers": ort.get_available_providers(),
}))
"""
    run = podman(
        "run", "--rm", "--network=host", "--read-only",
        "--entrypoint", "/opt/vaeserve/bin/python", image, "-c", check,
    )  # fmt: skip
    found = json.loads(run.stdout)
    assert "onnxruntime-gpu" in found["dists"]
    assert "onnxruntime" not in found["dists"] and "torch" not in found["dists"]
    assert "CUDAExecutionProvider" in found["providers"]
    assert set(found["loaded"]) >= CUDA_LIBS, found["loaded"]
    if not Path("/dev/nvidia0").exists():
        assert found["provider"].startswith("libcuda.so.1"), found["provider"]

    repo = _readable_copy(model_repo, shared_dir / "models")
    rows = digits_rows(tmp_path / "rows.npy")
    port, probe = free_port(), free_port()
    settings = {"HOST": "127.0.0.1", "PORT": str(port), "HEALTH_PORT": str(probe)}
    start(image, container_name, {repo: "/mnt/models"}, settings)
    in_container = _score(f"127.0.0.1:{port}", rows, tmp_path / "container.parquet")
    directly = direct_scores(model_repo, rows, tmp_path / "direct.parquet")
    for column in SCORE_COLUMNS:
        np.testing.assert_array_equal(in_container[column], directly[column], err_msg=column)
    stop(container_name)
