"""The worst request the default limits allow (max_request_rows rows with max_iw_samples
importance samples) holds bounded memory in a real `vae-server` process and gives it back:
resident memory read from /proc/PID/status (VmRSS now, VmHWM the peak). The figures for the
benchmark models, before and after, are in benchmarks/results/worst_request.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.server.helpers import ServerProcess, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server.settings import ServerSettings

MB = 1024  # kB per MB
PEAK_BUDGET_MB = 512  # what the worst request may add at its peak
KEPT_BUDGET_MB = 64  # what it may leave behind (allocator slack, not its tensors)


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """VmHWM starts again from the current RSS, so the next peak is the next request's own;
    where the kernel does not allow it, VmHWM stays the life peak (an upper bound)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@pytest.mark.slow
def test_worst_request_memory_is_bounded_and_given_back(model_repo: Path) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    rows, k = int(defaults["max_request_rows"]), int(defaults["max_iw_samples"])
    x = np.random.default_rng(0).uniform(0, 16, size=(rows, 64)).astype(np.float32)

    def score(n: int, samples: int) -> vae_pb2.ScoreResponse:
        req = vae_pb2.ScoreRequest(rows=to_tensor(x[:n]), iw_samples=samples, seed=3)
        (resp,) = list(stub.Score(iter([req]), timeout=600))
        assert not resp.HasField("error"), resp.error
        return resp

    with ServerProcess(
        "--model-repo", str(model_repo), "--device", "cpu", "--poll-interval-s", "0"
    ) as proc:
        channel, stub = stub_for(proc.port)
        score(64, 2)  # warm-up: the importance-sampling graph's first call
        before = _status_kb(proc.proc.pid, "VmRSS")
        _reset_peak(proc.proc.pid)
        first = score(rows, k)
        peak = _status_kb(proc.proc.pid, "VmHWM")
        after = _status_kb(proc.proc.pid, "VmRSS")
        second = score(rows, k)
        after_two = _status_kb(proc.proc.pid, "VmRSS")
        channel.close()
    added, kept, kept_two = (peak - before) / MB, (after - before) / MB, (after_two - before) / MB
    print(f"worst request: +{added:.0f} MB at peak, +{kept:.0f} MB after, +{kept_two:.0f} after 2")
    assert added <= PEAK_BUDGET_MB
    assert kept <= KEPT_BUDGET_MB and kept_two <= KEPT_BUDGET_MB
    assert len(first.iw_nll.shape) == 1 and first.iw_nll.shape[0] == rows
    assert first.iw_nll.data == second.iw_nll.data  # the same seed, the same answer
