"""Timing: wall and CPU stopwatches, a runner's rows/s with the cores other work used meanwhile,
pilot sizing of a measured point, percentiles and the summary of a point's repeats."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.procfs import machine_busy_seconds, mb, process_cpu_seconds

# Scores rows (all of them, in batches of the given size); may return its own report, whose
# "rows_per_s" then stands for the timed rate (vae-client times its own job).
Runner = Callable[[np.ndarray, int], dict[str, Any] | None]


class Stopwatch:
    """Wall seconds and this process's CPU seconds since it was made."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) so far, read at the same moment."""
        return time.perf_counter() - self._wall, time.process_time() - self._cpu

    @property
    def wall_s(self) -> float:
        """Wall seconds so far."""
        return time.perf_counter() - self._wall


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile of `values` (NaN when there are none)."""
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


Snapshot = tuple[float, float, float]


class CpuMeter:
    """How many cores other work on the machine used while a measurement ran.

    Ours: this process, its waited-for children (vae-client) and the server subprocess.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def snapshot(self) -> Snapshot:
        """(wall, machine busy CPU s, our CPU s)."""
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += process_cpu_seconds(self.server_pid)
        return time.perf_counter(), machine_busy_seconds(), ours

    @staticmethod
    def foreign_cores(a: Snapshot, b: Snapshot) -> float:
        """Cores' worth of CPU that was not ours between two snapshots (>= 0)."""
        wall = b[0] - a[0]
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall) if wall > 0 else math.nan


def time_run(
    run: Runner, x: np.ndarray, batch: int, meter: CpuMeter
) -> tuple[float, float, dict[str, Any] | None]:
    """(rows/s, other work's cores meanwhile, the runner's own report)."""
    before = meter.snapshot()
    extra = run(x, batch)
    after = meter.snapshot()
    return len(x) / (after[0] - before[0]), CpuMeter.foreign_cores(before, after), extra


def pilot_rate(run: Runner, x: np.ndarray, batch: int, target_s: float, min_batches: int) -> float:
    """Rows/s on a growing number of rows until a run takes a quarter of target_s (warm-up)."""
    n = min(len(x), batch * min_batches)
    while True:
        started = time.perf_counter()
        run(x[:n], batch)
        elapsed = time.perf_counter() - started
        if elapsed >= target_s / 4 or n >= len(x):
            return n / elapsed
        n = min(len(x), n * 4)


def point_rows(rate: float, seconds: float, batch: int, min_batches: int, cap: int) -> int:
    """Rows for about `seconds` at `rate`: whole batches, at least `min_batches`, at most `cap`."""
    n = math.ceil(rate * seconds / batch) * batch
    return int(min(max(n, batch * min_batches), max(batch, cap // batch * batch)))


@dataclass
class Point:
    """One measured point (system, model, batch size): its rows and each repeat's figures."""

    rows: int = 0
    runs: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)


def summarise(point: Point) -> dict[str, Any]:
    """A point as the results record it: median rows/s, every run, other work's cores."""
    out: dict[str, Any] = {
        "rows_per_s": round(statistics.median(point.runs), 1),
        "runs": [round(r, 1) for r in point.runs],
        "rows": point.rows,
        "other_load_cores": [round(f, 2) for f in point.foreign],
    }
    if point.extra:
        for key in ("wall_rows_per_s", "startup_s"):
            out[key] = round(statistics.median(e[key] for e in point.extra), 3)
        out["peak_rss_mb"] = mb(max(e["peak_rss_kib"] for e in point.extra))
    return out
