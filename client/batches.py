"""What `VaeClient.score` accepts as one batch (arrays, tuples, `Batch`es, Arrow batches and
tables) and how each becomes a checked `Batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeserve.client.arrays import as_rows, broadcast_condition
from vaeserve.client.errors import VaeClientError


@dataclass
class Batch:
    """One batch for `VaeClient.score`: rows [n, D], row ids (or the first id) and condition.

    Without row_ids the ids are `start` + 0..n-1, and without `start` they continue from the
    previous batch (0 for the first).
    """

    rows: np.ndarray
    row_ids: np.ndarray | None = None
    condition: np.ndarray | None = None
    start: int | None = None


def coerce_batch(item: Any, columns: Sequence[str] | None = None) -> Batch:
    """An array, (rows, ids[, condition]) tuple, Batch or Arrow batch/table to a checked Batch
    (float32 rows, int64 ids, condition broadcast to every row); `columns` picks Arrow columns."""
    if isinstance(item, Batch):
        batch = item
    elif isinstance(item, tuple):
        batch = Batch(*item)
    elif type(item).__module__.startswith("pyarrow"):
        batch = Batch(_arrow_rows(item, columns))
    else:
        batch = Batch(item)
    rows = as_rows(batch.rows, "rows")
    ids = None
    if batch.row_ids is not None:
        ids = np.ascontiguousarray(batch.row_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(rows):
            raise VaeClientError(f"row_ids has {len(ids)} entries for {len(rows)} rows")
    cond = broadcast_condition(batch.condition, len(rows))
    return Batch(rows, ids, cond, batch.start)


def _arrow_rows(item: Any, columns: Sequence[str] | None) -> np.ndarray:
    names = list(columns) if columns else list(item.schema.names)
    missing = [c for c in names if c not in item.schema.names]
    if missing:
        raise VaeClientError(f"columns {missing} are not in the record batch")
    cols = [np.asarray(item.column(c).to_numpy(zero_copy_only=False)) for c in names]
    if not cols:
        return np.zeros((item.num_rows, 0), np.float32)
    return np.column_stack([c.astype(np.float32, copy=False) for c in cols])
