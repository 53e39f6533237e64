"""Unary Encode latency of one row: N concurrent VaeClients, and one bare generated stub."""

from __future__ import annotations

import math
import statistics
import threading
import time
from typing import Any

import numpy as np

from benchmarks.measure import percentile

# its own subchannel pool gives each channel its own TCP connection
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def encode_latency(
    target: str, model: str, row: np.ndarray, concurrency: int, seconds: float, warmup: int
) -> dict[str, Any]:
    """Unary Encode of one row from `concurrency` threads, each with its own VaeClient.

    Each thread makes `warmup` calls first; then all call for `seconds` together.
    """
    from vaeserve.client import VaeClient

    clients = [VaeClient(target, options=OWN_CONNECTION) for _ in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        client, out = clients[k], latencies[k]
        try:
            for _ in range(warmup):
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
    time.sleep(seconds)
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
        "p50_ms": round(percentile(values, 50) * 1e3, 4),
        "p90_ms": round(percentile(values, 90) * 1e3, 4),
        "p99_ms": round(percentile(values, 99) * 1e3, 4),
        "mean_ms": round(statistics.fmean(values) * 1e3, 4) if values else math.nan,
    }


def raw_encode_latency(target: str, model: str, row: np.ndarray, seconds: float) -> dict[str, Any]:
    """One client calling the generated Encode stub directly (no VaeClient), for comparison."""
    import grpc

    from vaeserve.client import parse_model
    from vaeserve.common.tensors import to_tensor
    from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

    channel = grpc.insecure_channel(target, options=OWN_CONNECTION)
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
        "p50_ms": round(percentile(values, 50) * 1e3, 4),
        "p99_ms": round(percentile(values, 99) * 1e3, 4),
    }
