"""Scoring throughput (rows/s), unary Encode latency and peak memory, side by side in one run.

Two models are trained briefly (speed does not depend on how well they fit) and exported:
`mlp784`, a 784-400-20-400-784 MLP VAE on builtin:digits784 (the pytorch/examples VAE shape),
and `digits`, TrainConfig's default 64-256-128-8 VAE on builtin:digits. For each, at batches
of 1, 64, 1024 and 4096 rows:

- `onnxruntime`: scorer.onnx called in this process with the server's own session options
  (`vaeserve.server.sessions.SessionFactory` on default ServerSettings): the ceiling;
- `score_stream`: `VaeClient.score` over one gRPC Score stream to a `vae-server` subprocess on
  a free loopback port (so client and server do not share a GIL), default client settings;
- `vae_client`: `vae-client score IN.npy -o OUT.csv` as a subprocess; rows/s is the job's own
  figure (`--summary-json` rows_per_s: job start to last row written); the whole command's
  wall rate and its fixed start-up cost are recorded too;
- `torch`, `torch_1t`: PyTorch eager on the same weights (`load_model` + `model.score` under
  no_grad) with 2 threads and with 1;
- `pyod`, `pyod_1t`: `pyod.models.vae.VAE.decision_function(X, batch_size=B)`, the same layer
  sizes, fitted for a couple of epochs on the data set's rows, with 2 torch threads and with 1
  (two threads collapse when other work holds a core; the targets use the faster).

Each point scores enough rows for about `target_s` seconds (sized by a pilot run, which also
warms up) and is the median of `repeats` runs; repeats are interleaved over systems and batch
sizes, and each run records how many cores other processes used meanwhile (/proc/stat less
this process, its children and the server). Latency: p50/p99 of unary Encode of one row
through `VaeClient.encode` with 1, 8 and 32 concurrent client threads, each with its own
VaeClient on its own channel and TCP connection (one Python process, so the client threads
share a GIL), and one client on the bare generated stub. Peak RSS: the server's VmHWM, the
`vae-client` subprocess's peak, and this benchmark process's (which holds torch and PyOD).

    python -m benchmarks.throughput [--quick] [--output benchmarks/results/throughput.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.client_score import LAUNCHER
from benchmarks.machine import load_average, machine_description

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "throughput.json"
SYSTEMS = (
    "onnxruntime",
    "score_stream",
    "vae_client",
    "torch",
    "torch_1t",
    "pyod",
    "pyod_1t",
)
SYSTEM_LABELS = {
    "onnxruntime": "onnxruntime in-process (ceiling)",
    "score_stream": "gRPC Score stream (VaeClient.score)",
    "vae_client": "vae-client score, NPY -> CSV",
    "torch": "PyTorch eager (same weights), {threads} threads",
    "torch_1t": "PyTorch eager (same weights), 1 thread",
    "pyod": "PyOD VAE decision_function, {threads} threads",
    "pyod_1t": "PyOD VAE decision_function, 1 thread",
}
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: training data, layer sizes and a short epoch budget."""

    data: str
    hidden: tuple[int, ...]
    latent_dim: int
    epochs: int


MODELS: dict[str, ModelSpec] = {
    # pytorch/examples vae: 784-400-20-400-784
    "mlp784": ModelSpec("builtin:digits784", (400,), 20, epochs=5),
    # the README's `vae-train --data builtin:digits`: TrainConfig's default layer sizes
    "digits": ModelSpec("builtin:digits", (256, 128), 8, epochs=20),
}


@dataclass
class ThroughputConfig:
    """What to measure and how long each point runs."""

    models: tuple[str, ...] = ("mlp784", "digits")
    systems: tuple[str, ...] = SYSTEMS
    batches: tuple[int, ...] = (1, 64, 1024, 4096)
    repeats: int = 5
    target_s: float = 0.5  # seconds of scoring per point
    client_target_s: float = 2.0  # seconds of scoring per vae-client job
    min_batches: int = 3  # at least this many batches per point
    max_bytes: int = 400 << 20  # cap on the input rows of one point (float32 bytes)
    epochs: int | None = None  # override each model's epoch budget
    pyod_epochs: int = 2
    threads: int = 2  # torch threads (onnxruntime uses the server's setting)
    device: str = "auto"  # ServerSettings.device, for the server and in-process onnxruntime
    concurrency: tuple[int, ...] = (1, 8, 32)
    latency_s: float = 3.0  # seconds of calls per concurrency level
    latency_warmup: int = 50  # calls per client thread before timing

    @classmethod
    def quick(cls) -> ThroughputConfig:
        """Small sizes for a smoke test (numbers are not meaningful)."""
        return cls(
            batches=(1, 64, 1024),
            repeats=1,
            target_s=0.05,
            client_target_s=0.05,
            min_batches=2,
            max_bytes=16 << 20,
            epochs=1,
            pyod_epochs=1,
            concurrency=(1, 8),
            latency_s=0.3,
            latency_warmup=5,
        )


# ------------------------------------------------------------------------------ helpers
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status_kib(pid: int | str, key: str) -> int | None:
    """A kB field (VmHWM, VmRSS) of /proc/PID/status, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _chunks(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield x[i : i + batch]


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


class ServerProcess:
    """`vae-server` as a subprocess on a free loopback port, its log in a file."""

    def __init__(self, repo: Path, log_file: Path, device: str, timeout: float = 180) -> None:
        self.command = [
            str(BIN / "vae-server"),
            "--model-repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            device,
        ]
        self._log = open(log_file, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.port = 0
        self.banner = ""
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m and not found.is_set():
                    self.port, self.banner = int(m.group(1)), line.strip()
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"vae-server did not start (rc {self.proc.poll()}): {log_file.read_text()}"
                )
        self.rss_after_load_kib = _status_kib(self.proc.pid, "VmRSS")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the server process's peak resident memory so far."""
        return _status_kib(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        """SIGTERM, then kill after 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# ------------------------------------------------------------------------------ models
def prepare_models(
    config: ThroughputConfig, workdir: Path
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Train and export each model into WORKDIR/repo; returns (repo, facts per model)."""
    from vaeserve.export import export_model
    from vaeserve.training import TrainConfig, train

    repo = workdir / "repo"
    facts: dict[str, dict[str, Any]] = {}
    for name in config.models:
        spec = MODELS[name]
        epochs = config.epochs or spec.epochs
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short run may warn of posterior collapse
            result = train(
                TrainConfig(
                    data=spec.data,
                    run_dir=str(workdir / "runs" / name),
                    hidden=list(spec.hidden),
                    latent_dim=spec.latent_dim,
                    epochs=epochs,
                    patience=0,
                    progress=False,
                    threads=config.threads,
                )
            )
        train_s = time.perf_counter() - started
        exported = export_model(result.run_dir, repo, name)
        manifest = json.loads((exported.model_dir / "manifest.json").read_text())
        facts[name] = {
            "data": spec.data,
            "input_dim": manifest["input_dim"],
            "hidden": list(spec.hidden),
            "latent_dim": spec.latent_dim,
            "epochs": epochs,
            "train_seconds": round(train_s, 2),
            "run_dir": str(result.run_dir),
            "model_dir": str(exported.model_dir),
        }
        _log(f"trained and exported {name} ({epochs} epochs, {train_s:.1f} s)")
    return repo, facts


def dataset_rows(data: str) -> np.ndarray:
    """The rows of a builtin data set ("builtin:NAME"), float32."""
    from vaeserve.training.data import load_builtin

    return load_builtin(data.split(":", 1)[1]).x.astype(np.float32)


def bench_rows(data: str, rows: int) -> np.ndarray:
    """The data set's rows repeated to `rows` rows, float32 and contiguous."""
    x = dataset_rows(data)
    reps = -(-rows // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:rows])


# ------------------------------------------------------------------------------ systems
Runner = Callable[[np.ndarray, int], dict[str, Any] | None]


def onnxruntime_runner(model_dir: Path, repo: Path, device: str) -> tuple[Runner, dict[str, Any]]:
    """scorer.onnx in-process, with exactly the server's session options (default settings)."""
    from vaeserve.server.sessions import SessionFactory
    from vaeserve.server.settings import ServerSettings

    factory = SessionFactory(ServerSettings(model_repo=repo, device=device))  # type: ignore[arg-type]
    graph = factory.create(model_dir / "scorer.onnx", "scorer")

    def run(x: np.ndarray, batch: int) -> None:
        for chunk in _chunks(x, batch):
            graph.run({"x": chunk})

    so = graph.session.get_session_options()
    info = {
        "providers": graph.providers,
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "allow_spinning": so.get_session_config_entry("session.intra_op.allow_spinning"),
        "graph_optimization_level": str(so.graph_optimization_level),
    }
    return run, info


def score_stream_runner(client: Any, model: str) -> Runner:
    """VaeClient.score over one Score stream per measurement."""

    def run(x: np.ndarray, batch: int) -> None:
        n = 0
        for result in client.score(_chunks(x, batch), model=model):
            n += result.rows
        if n != len(x):
            raise RuntimeError(f"Score stream answered {n} of {len(x)} rows")

    return run


def vae_client_runner(target: str, model: str, workdir: Path) -> Runner:
    """`vae-client score` file to file; the input file is written before the clock starts."""

    def run(x: np.ndarray, batch: int) -> dict[str, Any]:
        src = workdir / f"in-{len(x)}x{x.shape[1]}.npy"
        if not src.exists():  # kept for the next repeat; the work folder is removed at the end
            np.save(src, x)
        out, summary_file = workdir / "out.csv", workdir / "summary.json"
        command = [
            str(BIN / "vae-client"),
            "score",
            str(src),
            "-o",
            str(out),
            "-m",
            model,
            "--server",
            target,
            "--batch-size",
            str(batch),
            "--overwrite",
            "-q",
            "--summary-json",
            str(summary_file),
        ]
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True
        )
        launched = json.loads(proc.stdout)
        if launched["rc"] != 0:
            raise RuntimeError(f"vae-client failed: {launched['stderr']}")
        summary = json.loads(summary_file.read_text())
        if summary["scored"] != len(x):
            raise RuntimeError(f"vae-client scored {summary['scored']} of {len(x)} rows")
        return {
            "rows_per_s": summary["rows_per_s"],
            "wall_s": launched["wall_s"],
            "wall_rows_per_s": len(x) / launched["wall_s"],
            "startup_s": launched["wall_s"] - summary["elapsed_s"],
            "peak_rss_kib": launched["peak_kib"],
        }

    return run


def torch_runner(run_dir: str, threads: int) -> Runner:
    """PyTorch eager on the same weights: load_model + model.score under no_grad."""
    import torch

    from vaeserve.training import load_model

    model, _ = load_model(run_dir)
    model.eval()

    def run(x: np.ndarray, batch: int) -> None:
        torch.set_num_threads(threads)  # process-wide: set on every run
        with torch.no_grad():
            for chunk in _chunks(x, batch):
                model.score(torch.from_numpy(chunk))

    return run


def fit_pyod(
    spec: ModelSpec, x_train: np.ndarray, epochs: int, threads: int
) -> tuple[Any, dict[str, Any]]:
    """PyOD's VAE with our layer sizes, fitted briefly; returns (detector, facts)."""
    import torch
    from pyod.models.vae import VAE

    torch.set_num_threads(threads)
    settings = {
        "encoder_neuron_list": list(spec.hidden),
        "decoder_neuron_list": list(reversed(spec.hidden)),
        "latent_dim": spec.latent_dim,
        "dropout_rate": 0.0,
        "epoch_num": epochs,
        "batch_size": 128,
        "preprocessing": True,
        "device": "cpu",
        "verbose": 0,
        "random_state": 0,
    }
    detector = VAE(**settings)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit(x_train)
    fit_s = time.perf_counter() - started
    facts = {"settings": settings, "fit_rows": len(x_train), "fit_seconds": round(fit_s, 2)}
    return detector, facts


def pyod_runner(detector: Any, threads: int) -> Runner:
    """decision_function(X, batch_size=B) of a fitted PyOD detector with `threads` torch threads."""
    import torch

    def run(x: np.ndarray, batch: int) -> None:
        torch.set_num_threads(threads)
        detector.decision_function(x, batch_size=batch)

    return run


# ------------------------------------------------------------------------------ measuring
@dataclass
class _Point:
    rows: int = 0
    runs: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)


_CLK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy (user, nice, system, irq, softirq, steal) since boot."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK


class CpuMeter:
    """How many cores other work on the machine used while a measurement ran.

    Ours: this process, its waited-for children (vae-client) and the server subprocess.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def snapshot(self) -> tuple[float, float, float]:
        """(wall, machine busy CPU s, our CPU s)."""
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += _proc_cpu_s(self.server_pid)
        return time.perf_counter(), _machine_busy_s(), ours

    @staticmethod
    def foreign_cores(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        """Cores' worth of CPU that was not ours between two snapshots (>= 0)."""
        wall = b[0] - a[0]
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall) if wall > 0 else math.nan


def _time(
    run: Runner, x: np.ndarray, batch: int, meter: CpuMeter
) -> tuple[float, float, dict[str, Any] | None]:
    """(rows/s, other work's cores meanwhile, the runner's own report)."""
    before = meter.snapshot()
    extra = run(x, batch)
    after = meter.snapshot()
    return len(x) / (after[0] - before[0]), CpuMeter.foreign_cores(before, after), extra


def _size(rate: float, seconds: float, batch: int, cfg: ThroughputConfig, cap: int) -> int:
    n = math.ceil(rate * seconds / batch) * batch
    return int(min(max(n, batch * cfg.min_batches), max(batch, cap // batch * batch)))


def _pilot(run: Runner, x: np.ndarray, batch: int, cfg: ThroughputConfig) -> float:
    """Rows/s on a growing number of rows until a run takes a quarter of target_s (warm-up)."""
    n = min(len(x), batch * cfg.min_batches)
    while True:
        started = time.perf_counter()
        run(x[:n], batch)
        elapsed = time.perf_counter() - started
        if elapsed >= cfg.target_s / 4 or n >= len(x):
            return n / elapsed
        n = min(len(x), n * 4)


# ------------------------------------------------------------------------------ latency
def encode_latency(
    target: str, model: str, row: np.ndarray, concurrency: int, cfg: ThroughputConfig
) -> dict[str, Any]:
    """Unary Encode of one row from `concurrency` threads, each with its own VaeClient."""
    from vaeserve.client import VaeClient

    clients = [
        VaeClient(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        client, out = clients[k], latencies[k]
        try:
            for _ in range(cfg.latency_warmup):
                client.encode(row, model=model)
        except BaseException as exc:
            errors.append(exc)
        ready.wait()
        clock = time.perf_counter
        try:
            while not stop.is_set():
                started = clock()
                client.encode(row, model=model)
                out.append(clock() - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(cfg.latency_s)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"Encode failed: {errors[0]}")
    values = [v for lat in latencies for v in lat]
    return {
        "concurrency": concurrency,
        "calls": len(values),
        "calls_per_s": round(len(values) / elapsed, 1),
        "p50_ms": round(_percentile(values, 50) * 1e3, 4),
        "p90_ms": round(_percentile(values, 90) * 1e3, 4),
        "p99_ms": round(_percentile(values, 99) * 1e3, 4),
        "mean_ms": round(statistics.fmean(values) * 1e3, 4) if values else math.nan,
    }


def raw_encode_latency(target: str, model: str, row: np.ndarray, seconds: float) -> dict[str, Any]:
    """One client calling the generated Encode stub directly (no VaeClient), for comparison."""
    import grpc

    from vaeserve.client import parse_model
    from vaeserve.common.tensors import to_tensor
    from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = vae_pb2_grpc.VaeServiceStub(channel)
    request = vae_pb2.EncodeRequest(model=parse_model(model), rows=to_tensor(row.reshape(1, -1)))
    for _ in range(50):
        stub.Encode(request, timeout=10)
    values = []
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        started = clock()
        stub.Encode(request, timeout=10)
        values.append(clock() - started)
    channel.close()
    return {
        "concurrency": 1,
        "calls": len(values),
        "p50_ms": round(_percentile(values, 50) * 1e3, 4),
        "p99_ms": round(_percentile(values, 99) * 1e3, 4),
    }


# ------------------------------------------------------------------------------ the run
def run_throughput(
    config: ThroughputConfig | None = None, workdir: str | Path | None = None
) -> dict[str, Any]:
    """Train/export the models, start a server, measure every point; returns a JSON-ready dict."""
    from vaeserve.client import VaeClient

    cfg = config or ThroughputConfig()
    started = time.perf_counter()
    machine = machine_description()
    context = (
        contextlib.nullcontext(str(workdir))
        if workdir is not None
        else tempfile.TemporaryDirectory(prefix="vaeserve-throughput-")
    )
    with context as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        repo, facts = prepare_models(cfg, work)
        server = ServerProcess(repo, work / "server.log", cfg.device)
        client = VaeClient(server.target)
        try:
            client.wait_ready(30)
            _log(f"server: {server.banner}")
            systems: dict[str, dict[str, Runner]] = {}
            rows: dict[str, np.ndarray] = {}
            notes: dict[str, dict[str, Any]] = {}
            for name in cfg.models:
                spec, model_dir = MODELS[name], Path(facts[name]["model_dir"])
                dim = facts[name]["input_dim"]
                rows[name] = bench_rows(spec.data, max(cfg.max_bytes // (4 * dim), 4096))
                runners: dict[str, Runner] = {}
                if "onnxruntime" in cfg.systems:
                    runners["onnxruntime"], notes.setdefault(name, {})["onnxruntime"] = (
                        onnxruntime_runner(model_dir, repo, cfg.device)
                    )
                if "score_stream" in cfg.systems:
                    runners["score_stream"] = score_stream_runner(client, name)
                if "vae_client" in cfg.systems:
                    client_dir = work / f"client-{name}"
                    client_dir.mkdir(exist_ok=True)
                    runners["vae_client"] = vae_client_runner(server.target, name, client_dir)
                for system, threads in (("torch", cfg.threads), ("torch_1t", 1)):
                    if system in cfg.systems:
                        runners[system] = torch_runner(facts[name]["run_dir"], threads)
                if {"pyod", "pyod_1t"} & set(cfg.systems):
                    detector, notes.setdefault(name, {})["pyod"] = fit_pyod(
                        spec, dataset_rows(spec.data), cfg.pyod_epochs, cfg.threads
                    )
                    for system, threads in (("pyod", cfg.threads), ("pyod_1t", 1)):
                        if system in cfg.systems:
                            runners[system] = pyod_runner(detector, threads)
                systems[name] = runners

            points: dict[str, dict[str, dict[int, _Point]]] = {
                m: {s: {} for s in systems[m]} for m in systems
            }
            # pilot (and warm-up) pass: size each point to about target_s of scoring
            for name, runners in systems.items():
                cap = len(rows[name])
                for batch in cfg.batches:
                    stream_rate = 0.0
                    for system, run in runners.items():
                        if system == "vae_client":
                            continue  # sized from the Score stream's rate below
                        rate = _pilot(run, rows[name], batch, cfg)
                        stream_rate = rate if system == "score_stream" else stream_rate
                        n = _size(rate, cfg.target_s, batch, cfg, cap)
                        points[name][system][batch] = _Point(n)
                    if "vae_client" in runners:
                        if not stream_rate:
                            stream = score_stream_runner(client, name)
                            stream_rate = _pilot(stream, rows[name], batch, cfg)
                        runners["vae_client"](rows[name][: batch * cfg.min_batches], batch)
                        n = _size(stream_rate, cfg.client_target_s, batch, cfg, cap)
                        points[name]["vae_client"][batch] = _Point(n)
                    _log(
                        f"{name} batch {batch}: rows per point "
                        + ", ".join(f"{s} {points[name][s][batch].rows}" for s in runners)
                    )
            # measured passes, interleaved over systems and batch sizes
            meter = CpuMeter(server.proc.pid)
            for rep in range(cfg.repeats):
                for name, runners in systems.items():
                    for batch in cfg.batches:
                        for system, run in runners.items():
                            point = points[name][system][batch]
                            rate, foreign, extra = _time(
                                run, rows[name][: point.rows], batch, meter
                            )
                            if extra is not None:
                                point.extra.append(extra)
                                rate = extra["rows_per_s"]
                            point.runs.append(rate)
                            point.foreign.append(foreign)
                        _log(
                            f"repeat {rep + 1}/{cfg.repeats} {name} batch {batch}: "
                            + ", ".join(
                                f"{s} {points[name][s][batch].runs[-1]:,.0f}" for s in runners
                            )
                        )
            latency: dict[str, Any] = {}
            for name in cfg.models:
                row = rows[name][:1]
                levels = []
                for c in cfg.concurrency:
                    levels.append(encode_latency(server.target, name, row, c, cfg))
                    _log(f"{name} Encode latency: {levels[-1]}")
                latency[name] = {
                    "vae_client": levels,
                    "raw_stub": raw_encode_latency(server.target, name, row, cfg.latency_s),
                }
            server_peak = server.peak_rss_kib()
            server_loaded = server.rss_after_load_kib
        finally:
            client.close()
            server.stop()
        throughput = {
            name: {
                system: {str(b): _summarise(p) for b, p in per_batch.items()}
                for system, per_batch in per_system.items()
            }
            for name, per_system in points.items()
        }
        client_peaks = [
            e["peak_rss_kib"]
            for per_system in points.values()
            for p in per_system.get("vae_client", {}).values()
            for e in p.extra
        ]
    settings = dataclasses.asdict(cfg)
    settings.update(
        {
            "server_command": [Path(server.command[0]).name, *server.command[1:]],
            "server_settings": "defaults (ServerSettings) except host, port and device above",
            "score_stream": "VaeClient defaults (max_in_flight=4, requests split at "
            "~4 MiB / 4096 rows); one Score stream per measurement",
            "vae_client_rate": "--summary-json rows_per_s (job start to last row written); "
            "wall_rows_per_s and startup_s cover the whole command",
            "latency_clients": "each thread has its own VaeClient on its own channel and TCP "
            "connection (grpc.use_local_subchannel_pool), all in one process (shared GIL)",
            "models_detail": notes,
        }
    )
    return {
        "benchmark": "throughput",
        "machine": machine,
        "load_average_end": load_average(),
        "settings": settings,
        "models": facts,
        "throughput": throughput,
        "latency": latency,
        "memory": {
            "server_peak_rss_mb": _mb(server_peak),
            "server_rss_after_load_mb": _mb(server_loaded),
            "vae_client_peak_rss_mb": _mb(max(client_peaks)) if client_peaks else None,
            "benchmark_process_peak_rss_mb": _mb(_status_kib("self", "VmHWM")),
        },
        "runtime_seconds": round(time.perf_counter() - started, 1),
    }


def _summarise(point: _Point) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rows_per_s": round(statistics.median(point.runs), 1),
        "runs": [round(r, 1) for r in point.runs],
        "rows": point.rows,
        "other_load_cores": [round(f, 2) for f in point.foreign],
    }
    if point.extra:
        for key in ("wall_rows_per_s", "startup_s"):
            out[key] = round(statistics.median(e[key] for e in point.extra), 3)
        out["peak_rss_mb"] = _mb(max(e["peak_rss_kib"] for e in point.extra))
    return out


# ------------------------------------------------------------------------------ report
TARGET_MODEL = "mlp784"
TARGET_BATCH = "1024"


def _runs(results: dict[str, Any], system: str) -> list[float] | None:
    point = results["throughput"].get(TARGET_MODEL, {}).get(system, {}).get(TARGET_BATCH)
    return None if point is None else point["runs"]


def _best_pyod(results: dict[str, Any]) -> list[float] | None:
    """Per repeat, the faster of PyOD with the configured threads and with 1 thread."""
    runs = [r for r in (_runs(results, "pyod"), _runs(results, "pyod_1t")) if r]
    return [max(vals) for vals in zip(*runs, strict=True)] if runs else None


def _ratios(a: list[float] | None, b: list[float] | None) -> tuple[float | None, float | None]:
    """(median of the per-repeat ratios a_i / b_i, ratio of the medians).

    Repeats are interleaved, so a_i and b_i ran seconds apart under about the same load.
    """
    if not a or not b:
        return None, None
    paired = statistics.median(x / y for x, y in zip(a, b, strict=True) if y)
    return paired, statistics.median(a) / statistics.median(b)


def speed_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's speed targets, each with its value from this run and met / not met.

    Throughput ratios use the median of per-repeat ratios (each pair measured back to back);
    the ratio of the medians is reported next to it.
    """
    ort = _runs(results, "onnxruntime")
    one = next(
        (
            lv
            for lv in results["latency"].get(TARGET_MODEL, {}).get("vae_client", [])
            if lv["concurrency"] == 1
        ),
        None,
    )
    where = f"{TARGET_MODEL}, {TARGET_BATCH}-row batches"
    rows: list[tuple[str, str, tuple[float | None, float | None], str, float, str]] = [
        (
            "Score stream / onnxruntime in-process",
            where,
            _ratios(_runs(results, "score_stream"), ort),
            ">=",
            0.6,
            "x",
        ),
        (
            "Score stream / PyOD VAE decision_function (faster of 1 and 2 threads)",
            where,
            _ratios(_runs(results, "score_stream"), _best_pyod(results)),
            ">=",
            1.5,
            "x",
        ),
        (
            "vae-client score file to file / onnxruntime in-process",
            where,
            _ratios(_runs(results, "vae_client"), ort),
            ">=",
            0.5,
            "x",
        ),
        (
            "Encode 1 row, p50, one client",
            TARGET_MODEL,
            (one and one["p50_ms"], None),
            "<=",
            0.5,
            " ms",
        ),
        (
            "Encode 1 row, p99, one client",
            TARGET_MODEL,
            (one and one["p99_ms"], None),
            "<=",
            2.0,
            " ms",
        ),
    ]
    out = []
    for name, measured_on, (value, of_medians), op, bound, unit in rows:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append(
            {
                "target": name,
                "measured_on": measured_on,
                "value": None if value is None else round(value, 3),
                "ratio_of_medians": None if of_medians is None else round(of_medians, 3),
                "bound": f"{op} {bound:g}{unit}",
                "met": met,
            }
        )
    return out


def _k(rate: float) -> str:
    return f"{rate / 1000:,.1f}k" if rate >= 1000 else f"{rate:,.0f}"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Markdown table of targets (`speed_targets`; quality ones have the same keys).

    Throughput ratios show the median of per-repeat ratios, then the ratio of the medians.
    """
    lines = ["| target | measured on | this run | bound | verdict |", "|---|---|---|---|---|"]
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        if t.get("ratio_of_medians") is not None:
            value += f" (ratio of medians {t['ratio_of_medians']:.3g})"
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured_on']} | {value} | {t['bound']} | {verdict} |")
    return "\n".join(lines) + "\n"


def markdown_tables(results: dict[str, Any]) -> str:
    """Markdown tables of a `run_throughput` result: rows/s, vae-client, latency, memory."""
    cfg = results["settings"]
    lines: list[str] = []
    for name, per_system in results["throughput"].items():
        facts = results["models"][name]
        arch = "-".join(
            str(v)
            for v in (
                facts["input_dim"],
                *facts["hidden"],
                facts["latent_dim"],
                *reversed(facts["hidden"]),
                facts["input_dim"],
            )
        )
        batches = list(next(iter(per_system.values())))
        lines += [
            f"### Throughput, rows/s: `{name}` ({arch}; median of {cfg['repeats']}; "
            "in brackets: x onnxruntime in-process)",
            "",
            "| system | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches),
        ]
        ort = per_system.get("onnxruntime", {})
        for system, points in per_system.items():
            cells = []
            for b in batches:
                rate = points[b]["rows_per_s"]
                base = ort.get(b, {}).get("rows_per_s")
                rel = f" ({rate / base:.2f}x)" if base and system != "onnxruntime" else ""
                cells.append(f"{_k(rate)}{rel}")
            label = SYSTEM_LABELS[system].format(threads=cfg["threads"])
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        other = [
            statistics.median(
                f for points in per_system.values() for f in points[b].get("other_load_cores", [])
            )
            if any(points[b].get("other_load_cores") for points in per_system.values())
            else math.nan
            for b in batches
        ]
        lines.append(
            "| *other work on the machine meanwhile, cores (median)* | "
            + " | ".join(f"*{v:.2f}*" for v in other)
            + " |"
        )
        lines.append("")
    if any("vae_client" in s for s in results["throughput"].values()):
        lines += [
            "### `vae-client score` file to file (NPY in, CSV out)",
            "",
            "| model | batch | rows | job rows/s | whole command rows/s | start-up s "
            "| peak RSS MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, per_system in results["throughput"].items():
            for b, p in per_system.get("vae_client", {}).items():
                lines.append(
                    f"| {name} | {b} | {p['rows']:,} | {_k(p['rows_per_s'])} | "
                    f"{_k(p['wall_rows_per_s'])} | {p['startup_s']:.2f} | {p['peak_rss_mb']} |"
                )
        lines += [
            "",
            "Job rows/s is the client's own `--summary-json` figure (first request to last row "
            "written); the whole command adds the start-up (interpreter, imports, connect).",
            "",
        ]
    lines += [
        "### Unary Encode of one row: latency through `VaeClient.encode`",
        "",
        "| model | concurrent clients | p50 ms | p90 ms | p99 ms | mean ms | calls/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, lat in results["latency"].items():
        for lv in lat["vae_client"]:
            lines.append(
                f"| {name} | {lv['concurrency']} | {lv['p50_ms']:.3f} | {lv['p90_ms']:.3f} | "
                f"{lv['p99_ms']:.3f} | {lv['mean_ms']:.3f} | {lv['calls_per_s']:,.0f} |"
            )
        raw = lat["raw_stub"]
        lines.append(
            f"| {name} | 1, bare generated stub | {raw['p50_ms']:.3f} | | {raw['p99_ms']:.3f} | | |"
        )
    mem = results["memory"]
    lines += [
        "",
        f"Each client thread has its own VaeClient (own channel and TCP connection) in one "
        f"process, so they share a GIL; {cfg['latency_s']:g} s of calls per level.",
        "",
        f"Peak RSS: server {mem['server_peak_rss_mb']} MB (VmHWM; "
        f"{mem['server_rss_after_load_mb']} MB after loading both models), `vae-client score` "
        f"{mem['vae_client_peak_rss_mb']} MB (largest over all its runs), this benchmark "
        f"process {mem['benchmark_process_peak_rss_mb']} MB (holds torch, PyOD and the input "
        "rows: not a client figure).",
        "",
    ]
    ort_info = next(
        (d["onnxruntime"] for d in cfg["models_detail"].values() if "onnxruntime" in d), None
    )
    if ort_info:
        lines.append(
            f"onnxruntime: providers {ort_info['providers']}, intra-op threads "
            f"{ort_info['intra_op_num_threads']} (0: one per physical core), spinning "
            f"{ort_info['allow_spinning']}, the server's defaults. PyTorch and PyOD: "
            f"{cfg['threads']} threads. Server: `{' '.join(cfg['server_command'])}`."
        )
    pyod = next((d["pyod"] for d in cfg["models_detail"].values() if "pyod" in d), None)
    if pyod:
        lines.append(
            f"PyOD: `VAE(encoder_neuron_list=..., dropout_rate=0.0, epoch_num="
            f"{pyod['settings']['epoch_num']}, preprocessing=True)` with our layer sizes, "
            "fitted on the data set's rows; `decision_function(X, batch_size=B)`."
        )
    lines.append(
        f"Load average at start {results['machine']['load_average']}, at end "
        f"{results['load_average_end']} (2 cores; other work on the machine skews timings); "
        f"took {results['runtime_seconds'] / 60:.1f} min."
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the throughput and latency benchmark, write JSON, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--workdir", help="keep the trained models and files here")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    args = parser.parse_args(argv)
    config = ThroughputConfig.quick() if args.quick else ThroughputConfig()
    results = run_throughput(config, args.workdir)
    results["targets"] = speed_targets(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown_tables(results))
    print(targets_table(results["targets"]))
    _log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
