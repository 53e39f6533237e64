"""A deterministic multi-file Parquet dataset for batch-scoring benchmarks: the rows of a
builtin data set repeated to the size asked for, with an int64 `id`, split over several files
in row groups, written a row group at a time (memory stays at one row group). A folder that
already holds the same dataset (its stamp file matches) is reused."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.prepare import dataset_rows

STAMP = "_dataset.json"


def write_dataset(
    folder: Path,
    *,
    data: str,
    feature_names: Sequence[str],
    rows: int,
    files: int,
    row_group: int,
) -> dict[str, Any]:
    """Write (or reuse) the dataset; its description (rows, files, bytes, ...)."""
    want = {"data": data, "rows": rows, "files": files, "row_group": row_group}
    stamp = folder / STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == want:
        return json.loads(stamp.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    source = dataset_rows(data)
    if source.shape[1] != len(feature_names):
        raise ValueError(f"{data} has {source.shape[1]} columns, the model {len(feature_names)}")
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    schema = pa.schema(
        [pa.field("id", pa.int64()), *(pa.field(n, pa.float32()) for n in feature_names)]
    )
    for k in range(files):
        path = folder / f"part{k:03d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(int(bounds[k]), int(bounds[k + 1]), row_group):
                stop = min(start + row_group, int(bounds[k + 1]))
                ids = np.arange(start, stop, dtype=np.int64)
                block = source[ids % len(source)]
                columns = [pa.array(ids), *(pa.array(block[:, j]) for j in range(block.shape[1]))]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    description = {
        "spec": want,
        "rows": rows,
        "features": len(feature_names),
        "files": files,
        "row_group": row_group,
        "bytes": sum(p.stat().st_size for p in folder.glob("*.parquet")),
    }
    stamp.write_text(json.dumps(description))
    return description
