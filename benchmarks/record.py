"""A benchmark's results record: the fields every one carries (name, machine, load at the end,
duration) around its own, and the JSON file it is written to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import load_average


def results_record(
    benchmark: str, machine: dict[str, Any], body: dict[str, Any], runtime_seconds: float
) -> dict[str, Any]:
    """A benchmark's results: its name, the machine it ran on, the load average at its end,
    then `body`, then how long it took."""
    return {
        "benchmark": benchmark,
        "machine": machine,
        "load_average_end": load_average(),
        **body,
        "runtime_seconds": runtime_seconds,
    }


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write `results` to `path` as indented JSON, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
