"""Peak memory of `vae-client score` stays bounded and flat as the input grows.

The client runs under a small launcher process so that the child's peak RSS (getrusage of the
launcher's children) is the client's own, not the test process's pages inherited at fork.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.client.conftest import MODEL, VENV_BIN, client_env

LAUNCHER = (
    "import json, resource, subprocess, sys\n"
    "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': proc.returncode, 'peak_kib': peak, 'stderr': proc.stderr[-2000:]}))\n"
)
NAMES = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
LIMIT_MB = 500


def peak_rss_mb(args: list[str]) -> float:
    """Run vae-client with args; return its peak resident memory in MiB (it must succeed)."""
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(VENV_BIN / "vae-client"), *args],
        capture_output=True,
        text=True,
        check=True,
        env=client_env(),
    )
    report = json.loads(out.stdout)
    assert report["rc"] == 0, report["stderr"]
    return report["peak_kib"] / 1024


def make_input(path: Path, rows: int) -> None:
    """`rows` random digit-like rows (64 features) written in slices, never all in memory."""
    rng = np.random.default_rng(rows)
    step = 100_000
    if path.suffix == ".npy":
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 64))
        for start in range(0, rows, step):
            n = min(step, rows - start)
            array[start : start + n] = rng.uniform(0, 16, size=(n, 64))
        array.flush()
        del array
        return
    schema = pa.schema([(n, pa.float32()) for n in NAMES])
    writer = (
        pq.ParquetWriter(path, schema)
        if path.suffix == ".parquet"
        else pacsv.CSVWriter(path, schema)
    )
    with writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            block = rng.uniform(0, 16, size=(n, 64)).astype(np.float32)
            writer.write_table(pa.table({name: block[:, j] for j, name in enumerate(NAMES)}))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("in_fmt", "out_fmt", "small", "large"),
    [
        ("npy", "csv", 100_000, 1_500_000),
        ("parquet", "parquet", 600_000, 2_000_000),
        ("csv", "jsonl", 30_000, 300_000),
    ],
)
def test_peak_memory_is_bounded_and_flat(
    target: str, tmp_path: Path, in_fmt: str, out_fmt: str, small: int, large: int
) -> None:
    peaks = {}
    for rows in (small, large):
        source = tmp_path / f"in{rows}.{in_fmt}"
        make_input(source, rows)
        out = tmp_path / f"out{rows}.{out_fmt}"
        args = ["score", str(source), "-o", str(out), "-m", MODEL, "--server", target, "-q"]
        peaks[rows] = peak_rss_mb(args)
        assert out.exists()
        source.unlink()
    assert peaks[large] < LIMIT_MB, peaks
    # Flat: ten times the rows may not cost more than a little noise.
    assert peaks[large] - peaks[small] < 50, peaks
