"""The worst request the default limits allow, and what it costs the server's memory.

One Score message of `max_request_rows` rows (4096) with `max_iw_samples` importance samples
(256) is sent to a `vae-server` subprocess; the server's resident memory is read from
/proc/PID/status before (VmRSS), at its peak (VmHWM, reset before each measurement) and 3 s
after the answer (VmRSS). Then four streams send two such messages each while a separate
channel times grpc.health.v1 checks.
With `--baseline REV` the same is measured on an older commit's server (benchmarks/revisions.py)
in the same run, and Score stream throughput at 1024-row batches (no importance sampling) is
compared between the two, interleaved, median of `--repeats`.

Models are trained for one epoch (memory and speed do not depend on the fit): `digits`,
TrainConfig's default 64-256-128-8 VAE, and `mlp784`, a 784-400-20-400-784 VAE.

    python -m benchmarks.worst_request [--baseline REV] [--baseline-models digits]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.procfs import mb
from benchmarks.revisions import unpack_revision
from benchmarks.server_process import ServerProcess

RESULTS = Path(__file__).parent / "results"
MODELS = {
    "digits": ("builtin:digits", [256, 128], 8),
    "mlp784": ("builtin:digits784", [400], 20),
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_limits() -> dict[str, int]:
    """max_request_rows and max_iw_samples as ServerSettings defaults them."""
    from vaeserve.server.settings import ServerSettings

    defaults = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    return {k: int(defaults[k]) for k in ("max_request_rows", "max_iw_samples")}


def prepare(workdir: Path, names: Sequence[str]) -> tuple[Path, dict[str, np.ndarray]]:
    """Train (one epoch) and export each model; returns the repository and each model's rows."""
    from vaeserve.export import export_model
    from vaeserve.training import TrainConfig, train
    from vaeserve.training.data import load_builtin

    repo = workdir / "repo"
    rows = {}
    for name in names:
        data, hidden, latent = MODELS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(
                TrainConfig(
                    data=data,
                    run_dir=str(workdir / "runs" / name),
                    hidden=hidden,
                    latent_dim=latent,
                    epochs=1,
                    patience=0,
                    progress=False,
                )
            )
        export_model(result.run_dir, repo, name)
        rows[name] = load_builtin(data.split(":", 1)[1]).x.astype(np.float32)
        _log(f"prepared {name}")
    return repo, rows


def tile(x: np.ndarray, n: int) -> np.ndarray:
    """x's rows repeated to n rows."""
    return np.ascontiguousarray(np.tile(x, (-(-n // len(x)), 1))[:n])


class Client:
    """A VaeService stub and a Health stub on their own channels."""

    def __init__(self, target: str) -> None:
        from grpc_health.v1 import health_pb2_grpc

        from vaeserve.proto.vae.v1 import vae_pb2_grpc

        opts = [("grpc.max_receive_message_length", 64 << 20)]
        opts.append(("grpc.max_send_message_length", 64 << 20))
        self.channel = grpc.insecure_channel(target, options=opts)
        self.health_channel = grpc.insecure_channel(target)
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.health_channel)

    def score(self, messages: list[Any], timeout: float = 600) -> list[Any]:
        return list(self.stub.Score(iter(messages), timeout=timeout))

    def close(self) -> None:
        self.channel.close()
        self.health_channel.close()


def score_message(
    model: str, x: np.ndarray, iw_samples: int = 0, batch_id: str = "", explain: int = 0
) -> Any:
    from vaeserve.common.tensors import to_tensor
    from vaeserve.proto.vae.v1 import vae_pb2

    return vae_pb2.ScoreRequest(
        model=vae_pb2.ModelRef(name=model),
        batch_id=batch_id,
        rows=to_tensor(x),
        iw_samples=iw_samples,
        seed=1,
        explain=explain,
    )


def _check_answers(answers: list[Any]) -> None:
    for a in answers:
        if a.HasField("error"):
            raise RuntimeError(f"the server answered an error: {a.error.message}")


def worst_request(server: ServerProcess, model: str, x: np.ndarray, limits: dict[str, int]) -> dict:
    """One worst message, then four streams of two, with health-check latency meanwhile."""
    client = Client(server.target)
    try:
        worst = tile(x, limits["max_request_rows"])
        k = limits["max_iw_samples"]
        _check_answers(client.score([score_message(model, worst[:64], 2)]))  # warm-up, IW too
        time.sleep(1.0)
        before = server.rss_kib()
        server.reset_peak()
        started = time.perf_counter()
        _check_answers(client.score([score_message(model, worst, k)]))
        seconds = time.perf_counter() - started
        peak = server.peak_rss_kib()
        time.sleep(3.0)
        after = server.rss_kib()
        one = {
            "rss_before_mb": mb(before),
            "peak_mb": mb(peak),
            "rss_after_mb": mb(after),
            "peak_added_mb": mb((peak or 0) - (before or 0)),
            "kept_after_mb": mb((after or 0) - (before or 0)),
            "seconds": round(seconds, 2),
        }
        _log(f"  one worst request: {one}")
        four = four_streams(server, client, model, worst, k)
        four["rss_before_mb"] = mb(before)
        _log(f"  four streams: {four}")
        return {"one": one, "four_streams": four}
    finally:
        client.close()


def four_streams(
    server: ServerProcess, client: Client, model: str, worst: np.ndarray, k: int
) -> dict[str, Any]:
    """Four streams of two worst messages each; health Check latencies while they run."""
    from grpc_health.v1 import health_pb2

    done = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []

    def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)

    def stream(i: int) -> None:
        try:
            msgs = [score_message(model, worst, k, f"{i}-{j}") for j in range(2)]
            _check_answers(client.score(msgs))
        except Exception as exc:
            errors.append(str(exc))

    server.reset_peak()
    prober = threading.Thread(target=probe)
    prober.start()
    workers = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    done.set()
    prober.join()
    peak = server.peak_rss_kib()
    time.sleep(3.0)
    return {
        "peak_mb": mb(peak),
        "rss_after_mb": mb(server.rss_kib()),
        "seconds": round(seconds, 2),
        "health_checks": len(latencies),
        "health_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "health_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "errors": errors,
    }


def throughput(
    servers: dict[str, ServerProcess], model: str, x: np.ndarray, batches: int, repeats: int
) -> dict[str, Any]:
    """Score stream rows/s at 1024-row batches on each server, runs interleaved (ABBA)."""
    msgs = [score_message(model, tile(x, 1024)) for _ in range(batches)]
    clients = {name: Client(s.target) for name, s in servers.items()}
    runs: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for c in clients.values():  # warm up
            c.score(msgs[:4])
        for i in range(repeats):
            order = list(clients.items())
            for name, c in order if i % 2 == 0 else order[::-1]:  # ABBA: drift cancels out
                t0 = time.perf_counter()
                _check_answers(c.score(msgs))
                runs[name].append(batches * 1024 / (time.perf_counter() - t0))
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {
        name: {"rows_per_s_median": round(statistics.median(r)), "runs": [round(v) for v in r]}
        for name, r in runs.items()
    }
    if "before" in out and "after" in out:
        out["after_over_before"] = round(
            out["after"]["rows_per_s_median"] / out["before"]["rows_per_s_median"], 3
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as a BENCHMARKS.md section."""
    lim = results["limits"]
    lines = [
        "## Worst request: memory",
        "",
        f"One Score message of {lim['max_request_rows']} rows with iw_samples = "
        f"{lim['max_iw_samples']} (the default limits), then four streams of two such "
        "messages; server RSS from /proc/PID/status (`python -m benchmarks.worst_request`).",
        "",
        "| server | model | RSS before | peak (added) | RSS 3 s after (kept) | time | "
        "4 streams: peak | 4 streams: RSS after | health check max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, per_model in results["worst"].items():
        for model, r in per_model.items():
            one, four = r["one"], r["four_streams"]
            lines.append(
                f"| {label} | {model} | {one['rss_before_mb']} MB | {one['peak_mb']} MB "
                f"(+{one['peak_added_mb']}) | {one['rss_after_mb']} MB "
                f"(+{one['kept_after_mb']}) | {one['seconds']} s | {four['peak_mb']} MB | "
                f"{four['rss_after_mb']} MB | {four['health_max_ms']} ms |"
            )
    tp = results.get("throughput")
    if tp:
        lines += ["", "Score stream throughput, 1024-row batches, no importance sampling:", ""]
        for name in ("before", "after"):
            if name in tp:
                lines.append(f"- {name}: {tp[name]['rows_per_s_median']:,} rows/s (median)")
        if "after_over_before" in tp:
            lines.append(f"- after / before: {tp['after_over_before']}")
    if results.get("baseline"):
        lines += ["", f"before = commit {results['baseline']}; after = this checkout."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="", help="also measure this older commit's server")
    parser.add_argument("--models", default="digits,mlp784")
    parser.add_argument(
        "--baseline-models", default="digits", help="models to send the baseline (memory!)"
    )
    parser.add_argument("--no-current", action="store_true", help="measure only the baseline")
    parser.add_argument("--batches", type=int, default=100, help="1024-row batches per run")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS / "worst_request.json")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    limits = default_limits()
    results: dict[str, Any] = {"limits": limits, "baseline": args.baseline, "worst": {}}
    with tempfile.TemporaryDirectory(prefix="vae-worst-") as tmp:
        work = Path(tmp)
        repo, rows = prepare(work, models)
        servers: dict[str, ServerProcess] = {}
        try:
            if args.baseline:
                src = unpack_revision(args.baseline, work / "baseline")
                servers["before"] = ServerProcess(repo, pythonpath=src)
            if not args.no_current:
                servers["after"] = ServerProcess(repo)
            if args.repeats > 0 and "digits" in rows:
                results["throughput"] = throughput(
                    servers, "digits", rows["digits"], args.batches, args.repeats
                )
                _log(f"throughput: {results['throughput']}")
            for label, server in servers.items():
                chosen = [m for m in models if label == "after" or m in args.baseline_models]
                results["worst"][label] = {}
                for model in chosen:
                    _log(f"{label}: {model}")
                    results["worst"][label][model] = worst_request(
                        server, model, rows[model], limits
                    )
                server.stop()
        finally:
            for s in servers.values():
                s.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
