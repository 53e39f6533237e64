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

This module sizes and sequences the measurements; the systems are in `benchmarks.systems`,
the measuring in `benchmarks.measure` and `benchmarks.latency`, the speed targets in
`benchmarks.targets` and the tables in `benchmarks.throughput_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import encode_latency, raw_encode_latency
from benchmarks.machine import machine_description
from benchmarks.measure import (
    CpuMeter,
    Point,
    Runner,
    Stopwatch,
    pilot_rate,
    point_rows,
    summarise,
    time_run,
)
from benchmarks.prepare import bench_rows, dataset_rows, export_timed, train_model, work_folder
from benchmarks.procfs import mb, status_kib
from benchmarks.progress import log
from benchmarks.record import results_record, write_results
from benchmarks.server_process import ServerProcess
from benchmarks.systems import (
    SYSTEMS,
    fit_pyod,
    onnxruntime_runner,
    pyod_runner,
    score_stream_runner,
    torch_runner,
    vae_client_runner,
)
from benchmarks.targets import speed_targets, targets_table
from benchmarks.throughput_report import markdown_tables

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "throughput.json"

Points = dict[str, dict[str, dict[int, Point]]]  # model -> system -> batch size -> point


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


def prepare_models(
    config: ThroughputConfig, workdir: Path
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Train and export each model into WORKDIR/repo; returns (repo, facts per model)."""
    from vaeserve.training import TrainConfig

    repo = workdir / "repo"
    facts: dict[str, dict[str, Any]] = {}
    for name in config.models:
        spec = MODELS[name]
        epochs = config.epochs or spec.epochs
        result, trained = train_model(
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
        train_s = trained["train_seconds"]
        exported, _ = export_timed(result.run_dir, repo, name)
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
        log(f"trained and exported {name} ({epochs} epochs, {train_s:.1f} s)")
    return repo, facts


def _runners(
    cfg: ThroughputConfig,
    name: str,
    facts: dict[str, Any],
    repo: Path,
    work: Path,
    server: ServerProcess,
    client: Any,
) -> tuple[dict[str, Runner], dict[str, Any]]:
    """The runner of each configured system on one model, and how onnxruntime and PyOD were
    set up (empty when neither runs)."""
    spec, model_dir = MODELS[name], Path(facts["model_dir"])
    runners: dict[str, Runner] = {}
    notes: dict[str, Any] = {}
    if "onnxruntime" in cfg.systems:
        runners["onnxruntime"], notes["onnxruntime"] = onnxruntime_runner(
            model_dir, repo, cfg.device
        )
    if "score_stream" in cfg.systems:
        runners["score_stream"] = score_stream_runner(client, name)
    if "vae_client" in cfg.systems:
        client_dir = work / f"client-{name}"
        client_dir.mkdir(exist_ok=True)
        runners["vae_client"] = vae_client_runner(server.target, name, client_dir)
    for system, threads in (("torch", cfg.threads), ("torch_1t", 1)):
        if system in cfg.systems:
            runners[system] = torch_runner(facts["run_dir"], threads)
    if {"pyod", "pyod_1t"} & set(cfg.systems):
        detector, notes["pyod"] = fit_pyod(
            spec.hidden, spec.latent_dim, dataset_rows(spec.data), cfg.pyod_epochs, cfg.threads
        )
        for system, threads in (("pyod", cfg.threads), ("pyod_1t", 1)):
            if system in cfg.systems:
                runners[system] = pyod_runner(detector, threads)
    return runners, notes


def _size_points(
    cfg: ThroughputConfig,
    systems: dict[str, dict[str, Runner]],
    rows: dict[str, np.ndarray],
    client: Any,
) -> Points:
    """Pilot (and warm-up) pass: size each point to about target_s of scoring.

    vae-client jobs are sized from the Score stream's rate, to about client_target_s.
    """
    points: Points = {m: {s: {} for s in systems[m]} for m in systems}
    for name, runners in systems.items():
        cap = len(rows[name])
        for batch in cfg.batches:
            stream_rate = 0.0
            for system, run in runners.items():
                if system == "vae_client":
                    continue  # sized from the Score stream's rate below
                rate = pilot_rate(run, rows[name], batch, cfg.target_s, cfg.min_batches)
                stream_rate = rate if system == "score_stream" else stream_rate
                n = point_rows(rate, cfg.target_s, batch, cfg.min_batches, cap)
                points[name][system][batch] = Point(n)
            if "vae_client" in runners:
                if not stream_rate:
                    stream = score_stream_runner(client, name)
                    stream_rate = pilot_rate(
                        stream, rows[name], batch, cfg.target_s, cfg.min_batches
                    )
                runners["vae_client"](rows[name][: batch * cfg.min_batches], batch)
                n = point_rows(stream_rate, cfg.client_target_s, batch, cfg.min_batches, cap)
                points[name]["vae_client"][batch] = Point(n)
            log(
                f"{name} batch {batch}: rows per point "
                + ", ".join(f"{s} {points[name][s][batch].rows}" for s in runners)
            )
    return points


def _measure(
    cfg: ThroughputConfig,
    systems: dict[str, dict[str, Runner]],
    rows: dict[str, np.ndarray],
    points: Points,
    meter: CpuMeter,
) -> None:
    """The measured passes, interleaved over systems and batch sizes: each repeat adds one run
    to every point."""
    for rep in range(cfg.repeats):
        for name, runners in systems.items():
            for batch in cfg.batches:
                for system, run in runners.items():
                    point = points[name][system][batch]
                    rate, foreign, extra = time_run(run, rows[name][: point.rows], batch, meter)
                    if extra is not None:
                        point.extra.append(extra)
                        rate = extra["rows_per_s"]
                    point.runs.append(rate)
                    point.foreign.append(foreign)
                log(
                    f"repeat {rep + 1}/{cfg.repeats} {name} batch {batch}: "
                    + ", ".join(f"{s} {points[name][s][batch].runs[-1]:,.0f}" for s in runners)
                )


def _latency(target: str, name: str, row: np.ndarray, cfg: ThroughputConfig) -> dict[str, Any]:
    """Encode latency of one model at each concurrency level, and through the bare stub."""
    levels = []
    for c in cfg.concurrency:
        levels.append(encode_latency(target, name, row, c, cfg.latency_s, cfg.latency_warmup))
        log(f"{name} Encode latency: {levels[-1]}")
    return {"vae_client": levels, "raw_stub": raw_encode_latency(target, name, row, cfg.latency_s)}


def _settings(
    cfg: ThroughputConfig, server_command: list[str], notes: dict[str, Any]
) -> dict[str, Any]:
    """The configuration, the server's command line and how each system was set up."""
    settings = dataclasses.asdict(cfg)
    settings.update(
        {
            "server_command": [Path(server_command[0]).name, *server_command[1:]],
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
    return settings


def run_throughput(
    config: ThroughputConfig | None = None, workdir: str | Path | None = None
) -> dict[str, Any]:
    """Train/export the models, start a server, measure every point; returns a JSON-ready dict."""
    from vaeserve.client import VaeClient

    cfg = config or ThroughputConfig()
    clock = Stopwatch()
    machine = machine_description()
    with work_folder(workdir, "vaeserve-throughput-") as work:
        repo, facts = prepare_models(cfg, work)
        server = ServerProcess(repo, device=cfg.device, log_file=work / "server.log")
        client = VaeClient(server.target)
        try:
            client.wait_ready(30)
            log(f"server: {server.banner}")
            systems: dict[str, dict[str, Runner]] = {}
            rows: dict[str, np.ndarray] = {}
            notes: dict[str, dict[str, Any]] = {}
            for name in cfg.models:
                dim = facts[name]["input_dim"]
                rows[name] = bench_rows(MODELS[name].data, max(cfg.max_bytes // (4 * dim), 4096))
                systems[name], note = _runners(cfg, name, facts[name], repo, work, server, client)
                if note:
                    notes[name] = note
            points = _size_points(cfg, systems, rows, client)
            _measure(cfg, systems, rows, points, CpuMeter(server.proc.pid))
            latency = {m: _latency(server.target, m, rows[m][:1], cfg) for m in cfg.models}
            server_peak = server.peak_rss_kib()
            server_loaded = server.rss_after_load_kib
        finally:
            client.close()
            server.stop()
    throughput = {
        name: {
            system: {str(b): summarise(p) for b, p in per_batch.items()}
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
    memory = {
        "server_peak_rss_mb": mb(server_peak),
        "server_rss_after_load_mb": mb(server_loaded),
        "vae_client_peak_rss_mb": mb(max(client_peaks)) if client_peaks else None,
        "benchmark_process_peak_rss_mb": mb(status_kib("self", "VmHWM")),
    }
    body = {
        "settings": _settings(cfg, server.command, notes),
        "models": facts,
        "throughput": throughput,
        "latency": latency,
        "memory": memory,
    }
    return results_record("throughput", machine, body, round(clock.wall_s, 1))


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
    write_results(args.output, results)
    print(markdown_tables(results))
    print(targets_table(results["targets"]))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
