"""What every input reader shares: the chunk it yields, the reader base class, and the
step that turns Arrow batches into fixed-size chunks of float32 feature rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import file_size


@dataclass
class Malformed:
    """A CSV line that could not be parsed into a row (wrong number of fields)."""

    line: int | None
    reason: str


@dataclass
class InputChunk:
    """Consecutive input rows: `start` is the number (0-based) of the first row."""

    start: int
    rows: np.ndarray
    aux: pa.Table | None = None
    malformed: list[Malformed] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_numbers(self) -> np.ndarray:
        """Input row numbers of this chunk's rows."""
        return np.arange(self.start, self.start + len(self.rows), dtype=np.int64)


class InputReader:
    """Base of the readers: resolved columns, total rows (when known) and chunk iteration."""

    format = ""

    def __init__(self, path: str) -> None:
        self.path = path
        self.columns: list[str] = []  # every input column
        self.features: list[str] = []  # the selected feature columns, in model order
        self.aux_columns: list[str] = []  # columns carried alongside (ids, condition, kept)
        self.num_rows: int | None = None
        self.size_bytes: int | None = None

    def _require_file(self) -> None:
        """Clear error for a missing input (a local path or a filesystem URI); records its
        size for progress."""
        size = file_size(self.path)
        if size is None:
            raise VaeClientError(f"{self.path}: no such file")
        self.size_bytes = size

    def chunks(
        self, batch_size: int, skip_rows: int = 0, skip_malformed: int = 0
    ) -> Iterator[InputChunk]:
        """Chunks of at most batch_size rows, after skipping rows (and malformed lines) done."""
        raise NotImplementedError

    def column_types(self, names: Sequence[str]) -> dict[str, pa.DataType]:
        """Arrow types of input columns as chunks carry them (CSV: features float32, else text)."""
        return {c: pa.float32() if c in self.features else pa.string() for c in names}

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def features_matrix(batch: pa.RecordBatch | pa.Table, features: Sequence[str]) -> np.ndarray:
    """The feature columns of an Arrow batch as a C-ordered float32 matrix, NaN for nulls."""
    # Columns are filled as contiguous rows of the transpose, then transposed in one copy.
    out = np.empty((len(features), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        column = batch.column(name)
        if column.type != pa.float32():
            column = column.cast(pa.float32(), safe=False)
        out[j] = column.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(out.T)


def rebatch(
    pieces: Iterator[tuple[pa.RecordBatch | None, list[Malformed]]],
    features: Sequence[str],
    aux_columns: Sequence[str],
    batch_size: int,
    skip_rows: int,
) -> Iterator[InputChunk]:
    """Re-cut Arrow batches of any size into InputChunks of batch_size rows."""
    batch_size = max(1, batch_size)
    position = 0  # input row number of the next row read
    buffered: list[tuple[np.ndarray, pa.Table | None]] = []
    buffered_rows = 0
    pending_malformed: list[Malformed] = []
    start = skip_rows

    def emit(n: int) -> InputChunk:
        nonlocal buffered, buffered_rows, start, pending_malformed
        rows_parts, aux_parts, taken = [], [], 0
        rest: list[tuple[np.ndarray, pa.Table | None]] = []
        for rows, aux in buffered:
            if taken >= n:
                rest.append((rows, aux))
                continue
            k = min(len(rows), n - taken)
            rows_parts.append(rows[:k])
            if aux is not None:
                aux_parts.append(aux.slice(0, k))
            if k < len(rows):
                rest.append((rows[k:], aux.slice(k) if aux is not None else None))
            taken += k
        buffered, buffered_rows = rest, buffered_rows - taken
        rows = (
            np.concatenate(rows_parts) if rows_parts else np.zeros((0, len(features)), np.float32)
        )
        aux = pa.concat_tables(aux_parts).combine_chunks() if aux_parts else None
        chunk = InputChunk(start, rows, aux, pending_malformed)
        pending_malformed = []
        start += taken
        return chunk

    for batch, malformed in pieces:
        pending_malformed.extend(malformed)
        if batch is None or batch.num_rows == 0:
            continue
        n = batch.num_rows
        if position + n <= skip_rows:
            position += n
            continue
        if position < skip_rows:
            batch = batch.slice(skip_rows - position)
        position += n
        rows = features_matrix(batch, features)
        aux = pa.Table.from_batches([batch.select(list(aux_columns))]) if aux_columns else None
        buffered.append((rows, aux))
        buffered_rows += len(rows)
        while buffered_rows >= batch_size:
            yield emit(batch_size)
    if position < skip_rows:
        raise VaeClientError(
            f"the input has {position} rows but the checkpoint says {skip_rows} were done; "
            "was the input changed since the interrupted run?"
        )
    if buffered_rows or pending_malformed:
        yield emit(buffered_rows)
