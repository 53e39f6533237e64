"""The machine and package description that every benchmark result carries."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata
from typing import Any

# distributions whose versions a result records; onnxruntime may come as onnxruntime-gpu
PACKAGES = (
    "vaeserve",
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "scikit-learn",
    "pyod",
    "grpcio",
    "protobuf",
)
MODULES = ("torch", "onnxruntime", "sklearn", "pyod", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `names`; distributions that are not installed are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def module_versions(names: tuple[str, ...] = MODULES) -> dict[str, str]:
    """`__version__` of importable modules (onnxruntime may come from onnxruntime-gpu)."""
    out = {}
    for name in names:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except (ImportError, AttributeError):
            continue
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_description() -> dict[str, Any]:
    """Platform, CPU, memory, Python and package versions, for a results file."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "versions": module_versions(),
        "packages": package_versions(),
        "load_average": load_average(),
    }
