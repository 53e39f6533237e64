"""What a benchmark needs before it measures: a work folder, our models trained and exported
(with their wall and CPU time), and a builtin data set's rows."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.measure import Stopwatch

if TYPE_CHECKING:  # imported where used: torch loads slowly
    from vaeserve.export import ExportResult
    from vaeserve.training import TrainConfig, TrainResult


@contextmanager
def work_folder(workdir: str | Path | None, prefix: str) -> Iterator[Path]:
    """`workdir` (created, kept afterwards), or a temporary folder removed at the end."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def train_model(config: TrainConfig) -> tuple[TrainResult, dict[str, Any]]:
    """`train(config)`, timed; returns (TrainResult, facts of the run).

    The facts: wall and CPU seconds, epochs, early stopping, active units and how many
    posterior-collapse warnings it raised (recorded, not printed: short runs raise them).
    """
    from vaeserve.training import PosteriorCollapseWarning, train

    clock = Stopwatch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    seconds, cpu_seconds = clock.read()
    return result, {
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "active_units": result.best_metrics["active_units"],
        "collapse_warnings": sum(issubclass(w.category, PosteriorCollapseWarning) for w in caught),
    }


def export_timed(run_dir: str | Path, repo: Path, name: str) -> tuple[ExportResult, float]:
    """`export_model(run_dir, repo, name)`; returns (ExportResult, wall seconds)."""
    from vaeserve.export import export_model

    clock = Stopwatch()
    exported = export_model(run_dir, repo, name)
    return exported, clock.wall_s


def dataset_rows(data: str) -> np.ndarray:
    """The rows of a builtin data set ("builtin:NAME"), float32."""
    from vaeserve.training.data import load_builtin

    return load_builtin(data.split(":", 1)[1]).x.astype(np.float32)


def bench_rows(data: str, rows: int) -> np.ndarray:
    """The data set's rows repeated to `rows` rows, float32 and contiguous."""
    x = dataset_rows(data)
    reps = -(-rows // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:rows])
