"""Readings from /proc: a process's memory and CPU time, and the machine's busy CPU time."""

from __future__ import annotations

import math
import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int | str, key: str) -> int | None:
    """A kB field (VmHWM, VmRSS) of /proc/PID/status, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mb(kib: int | None) -> float | None:
    """KiB as MB with one decimal, as the results record memory (None stays None)."""
    return None if kib is None else round(kib / 1024, 1)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (user, nice, system, irq, softirq, steal) since boot."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLOCK_TICKS
