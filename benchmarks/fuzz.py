"""The long fuzz run: the suite's fuzz strategies (tests/server/fuzzing.py) for many cases
against a `vae-server` subprocess with default limits, counting every status code.

The repository holds two synthetic models in the model format (tests/server/synth.py, no
torch): "digits" (64 features, latent 8) and the conditional "cond". Cases are spread over
Encode, Decode, Sample, Score, ModelInfer and ModelStreamInfer (raw undecodable bytes
included) by `--workers` processes with their own seeds. The server must answer every call
within its deadline, never UNKNOWN or INTERNAL, and stay up and healthy; its RSS is read from
/proc/PID/status before and after.

    python -m benchmarks.fuzz --cases 100000 [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def worker(target: str, cases: int, seed: int) -> dict[str, Any]:
    """Run `cases` fuzz cases against `target` with hypothesis seed `seed`."""
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    from tests.server import fuzzing

    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    codes: Counter[str] = Counter()
    per_rpc: dict[str, Counter[str]] = {}
    bad: list[str] = []
    slowest = [0.0]
    count = [0]

    @hseed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzzing.any_case())
    def run(case: fuzzing.Case) -> None:
        outcome = fuzzing.send(channel, case)
        count[0] += 1
        codes.update(outcome.codes)
        per_rpc.setdefault(case.rpc, Counter()).update(outcome.codes)
        slowest[0] = max(slowest[0], outcome.seconds)
        if outcome.bad and len(bad) < 20:
            bad.append(f"{case.rpc}: {outcome.codes} for {case.request!r:.300}")

    run()
    channel.close()
    return {
        "cases": count[0],
        "codes": dict(codes),
        "per_rpc": {k: dict(v) for k, v in per_rpc.items()},
        "bad": bad,
        "slowest_s": slowest[0],
    }


def _worker_entry(args: tuple[str, int, int]) -> dict[str, Any]:
    return worker(*args)


def markdown(r: dict[str, Any]) -> str:
    """The run as a BENCHMARKS.md section."""
    total = sum(r["codes"].values())
    bad = sum(r["codes"].get(c, 0) for c in ("UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"))
    lines = [
        "## Fuzzing",
        "",
        f"{r['cases']:,} fuzzed cases (tests/server/fuzzing.py's strategies: malformed but "
        "type-valid Encode, Decode, Sample, Score, ModelInfer and ModelStreamInfer requests, "
        "and raw undecodable bytes) against a `vae-server` subprocess with default limits, "
        f"{r['workers']} client processes, in {r['seconds'] / 60:.1f} minutes "
        "(`python -m benchmarks.fuzz --cases N`). Every status code the calls got (a stream "
        "counts each in-stream answer and its final status):",
        "",
        "| code | count | share |",
        "|---|---:|---:|",
    ]
    for code, n in sorted(r["codes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {code} | {n:,} | {100 * n / total:.1f}% |")
    lines += [
        "",
        f"- UNKNOWN, INTERNAL or DEADLINE_EXCEEDED: **{bad}**; slowest call "
        f"{r['slowest_s']:.2f} s (deadline {r['deadline_s']:.0f} s)",
        f"- server afterwards: {'up, health SERVING' if r['healthy_after'] else 'NOT healthy'}",
        f"- server RSS: {r['rss_before_mb']} MB before, {r['rss_after_mb']} MB after "
        f"(peak {r['peak_mb']} MB)",
        f"- server log: {r['server_log_lines']:,} lines, {r['server_log_tracebacks']} tracebacks "
        "(one warning line per refused undecodable or oversize message)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "fuzz.json")
    args = parser.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from benchmarks.procfs import mb
    from benchmarks.server_process import ServerProcess
    from tests.server import fuzzing
    from tests.server.synth import write_synthetic_model

    with tempfile.TemporaryDirectory(prefix="vae-fuzz-") as tmp:
        repo = Path(tmp) / "repo"
        write_synthetic_model(repo, "digits", 1, input_dim=64, latent_dim=8, seed=1)
        write_synthetic_model(repo, "cond", 1, input_dim=8, latent_dim=2, cond_dim=3, seed=2)
        server = ServerProcess(repo, "--poll-interval-s", "0", log_file=Path(tmp) / "server.log")
        try:
            before = server.rss_kib()
            started = time.perf_counter()
            per = [args.cases // args.workers] * args.workers
            per[0] += args.cases - sum(per)
            jobs = [(server.target, n, args.seed + i) for i, n in enumerate(per)]
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                parts = pool.map(_worker_entry, jobs)
            seconds = time.perf_counter() - started
            channel = grpc.insecure_channel(server.target)
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            channel.close()
            healthy = server.alive() and status.status == health_pb2.HealthCheckResponse.SERVING
            after, peak = server.rss_kib(), server.peak_rss_kib()
        finally:
            server.stop()
        log_text = (Path(tmp) / "server.log").read_text(errors="replace")
        log_lines, tracebacks = log_text.count("\n"), log_text.count("Traceback")
    codes: Counter[str] = Counter()
    per_rpc: dict[str, Counter[str]] = {}
    for p in parts:
        codes.update(p["codes"])
        for rpc, c in p["per_rpc"].items():
            per_rpc.setdefault(rpc, Counter()).update(c)
    results = {
        "cases": sum(p["cases"] for p in parts),
        "workers": args.workers,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "deadline_s": fuzzing.CALL_TIMEOUT_S,
        "codes": dict(codes),
        "per_rpc": {k: dict(v) for k, v in sorted(per_rpc.items())},
        "bad": [b for p in parts for b in p["bad"]],
        "slowest_s": round(max(p["slowest_s"] for p in parts), 3),
        "healthy_after": healthy,
        "rss_before_mb": mb(before),
        "rss_after_mb": mb(after),
        "peak_mb": mb(peak),
        "server_log_lines": log_lines,
        "server_log_tracebacks": tracebacks,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    bad = sum(codes.get(c, 0) for c in fuzzing.BAD_CODES)
    return 0 if healthy and bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
