"""Streaming table writers for CSV, JSONL, Parquet and NPY output, resumable where possible.

Every writer takes Arrow tables in order and `commit()` returns a byte position that a later run
can resume at: the writer reopens the file, truncates it there and appends. CSV and JSONL write
the output file itself. Parquet cannot be appended to, so rows are spooled to an Arrow IPC stream
next to the output (`OUT.spool.arrows`) and converted to Parquet, row group by row group, when the
job finishes. NPY (numeric columns only) reserves a fixed-size header and fills in the row count
at the end; it is not resumable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vaeserve.client.errors import VaeClientError

OUTPUT_FORMATS = ("csv", "parquet", "jsonl", "npy")
_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".npy": "npy",
}
ROW_GROUP_BYTES = 16 << 20


def detect_output_format(
    path: str, fmt: str | None = None, allowed: Sequence[str] = OUTPUT_FORMATS
) -> str:
    """The output format from --format or the file name; '-' (stdout) is CSV by default."""
    if fmt:
        fmt = fmt.lower()
    elif path == "-":
        fmt = "csv"
    else:
        suffix = os.path.splitext(path.lower())[1]
        if suffix not in _SUFFIXES:
            raise VaeClientError(
                f"{path}: cannot tell the output format from the extension "
                f"{suffix or '(none)'!r}; use {', '.join('.' + f for f in allowed)} or pass "
                "--format"
            )
        fmt = _SUFFIXES[suffix]
    if fmt not in allowed:
        raise VaeClientError(f"output format {fmt!r} is not one of {', '.join(allowed)} here")
    if path == "-" and fmt not in ("csv", "jsonl"):
        raise VaeClientError(f"stdout ('-') takes CSV or JSONL, not {fmt}")
    return fmt


class TableWriter:
    """Base of the writers: write tables in order, commit positions, finish or abort."""

    format = ""
    resumable = True

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Append rows (the table must have the writer's columns)."""
        raise NotImplementedError

    def commit(self) -> int:
        """Flush and return the position a resumed run truncates to."""
        raise NotImplementedError

    def finish(self) -> None:
        """Complete the output file; nothing may be written after this."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close without completing, leaving what was committed for a resumed run."""
        raise NotImplementedError

    def _conform(self, table: pa.Table) -> pa.Table:
        if table.schema.names != self.schema.names:
            raise VaeClientError(
                f"internal error: writing columns {table.schema.names} to {self.schema.names}"
            )
        return table if table.schema.equals(self.schema) else table.cast(self.schema)


def _open_for_append(path: str, resume_at: int | None) -> tuple[BinaryIO, bool]:
    """Open path for writing; (file, fresh): resumed files are truncated to resume_at."""
    if resume_at is None or resume_at == 0 or not os.path.exists(path):
        if resume_at:
            raise VaeClientError(
                f"{path}: the checkpoint says {resume_at} bytes were written but the file is gone"
            )
        return open(path, "wb"), True
    size = os.path.getsize(path)
    if size < resume_at:
        raise VaeClientError(
            f"{path} holds {size} bytes but the checkpoint says {resume_at} were committed; "
            "was the output changed since the interrupted run?"
        )
    f = open(path, "r+b")  # noqa: SIM115 - owned by the writer
    f.truncate(resume_at)
    f.seek(resume_at)
    return f, False


class _FileWriter(TableWriter):
    """Shared file handling of the CSV and JSONL writers (stdout when path is '-')."""

    def __init__(self, path: str, schema: pa.Schema, resume_at: int | None) -> None:
        super().__init__(path, schema)
        if path == "-":
            if resume_at:
                raise VaeClientError("stdout output cannot be resumed")
            self._file: BinaryIO = sys.stdout.buffer
            self._owned = False
            self.resumable = False
            self._start()
            return
        self._owned = True
        self._file, fresh = _open_for_append(path, resume_at)
        if fresh:
            self._start()

    def _start(self) -> None:
        """Write whatever precedes the rows (a header)."""

    def commit(self) -> int:
        """Flush to the OS and return the file length."""
        self._file.flush()
        return self._file.tell() if self._owned else 0

    def finish(self) -> None:
        """Flush, fsync and close."""
        self._file.flush()
        if self._owned:
            os.fsync(self._file.fileno())
            self._file.close()

    def abort(self) -> None:
        """Flush and close (the committed prefix stays valid)."""
        try:
            self._file.flush()
        finally:
            if self._owned:
                self._file.close()


class CsvWriter(_FileWriter):
    """CSV with a header line; floats in shortest round-trip form, booleans as true/false."""

    format = "csv"

    def _start(self) -> None:
        sink = pa.BufferOutputStream()
        pacsv.write_csv(self.schema.empty_table(), sink)
        self._file.write(sink.getvalue().to_pybytes())

    def write(self, table: pa.Table) -> None:
        """Append rows without a header."""
        if table.num_rows == 0:
            return
        sink = pa.BufferOutputStream()
        pacsv.write_csv(
            self._conform(table), sink, write_options=pacsv.WriteOptions(include_header=False)
        )
        self._file.write(sink.getvalue().to_pybytes())
        self.rows += table.num_rows


def _json_fragments(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """Each value of a column as JSON text; NaN and infinities become null."""
    t = column.type
    if pa.types.is_floating(t):
        finite = pc.is_finite(column)
        text = pc.if_else(finite, pc.cast(column, pa.string()), pa.scalar(None, pa.string()))
        return [v if v is not None else "null" for v in text.to_pylist()]
    if pa.types.is_integer(t):
        return [v if v is not None else "null" for v in pc.cast(column, pa.string()).to_pylist()]
    if pa.types.is_boolean(t):
        return ["null" if v is None else ("true" if v else "false") for v in column.to_pylist()]
    return [json.dumps(v, default=str) for v in column.to_pylist()]


class JsonlWriter(_FileWriter):
    """One JSON object per line, keys in column order."""

    format = "jsonl"

    def write(self, table: pa.Table) -> None:
        """Append one line per row."""
        if table.num_rows == 0:
            return
        table = self._conform(table)
        keys = [json.dumps(name) + ":" for name in table.schema.names]
        columns = [_json_fragments(table.column(i)) for i in range(table.num_columns)]
        text = "".join(
            "{" + ",".join(k + v for k, v in zip(keys, values, strict=True)) + "}\n"
            for values in zip(*columns, strict=True)
        )
        self._file.write(text.encode())
        self.rows += table.num_rows


class ParquetWriter(TableWriter):
    """Parquet via an appendable Arrow IPC spool, converted when the job finishes."""

    format = "parquet"

    def __init__(self, path: str, schema: pa.Schema, resume_at: int | None) -> None:
        super().__init__(path, schema)
        self.spool = spool_path(path)
        self._file, fresh = _open_for_append(self.spool, resume_at)
        if fresh:
            self._file.write(schema.serialize().to_pybytes())

    def write(self, table: pa.Table) -> None:
        """Append the rows to the spool as IPC record batch messages."""
        if table.num_rows == 0:
            return
        for batch in self._conform(table).combine_chunks().to_batches():
            self._file.write(batch.serialize().to_pybytes())
        self.rows += table.num_rows

    def commit(self) -> int:
        """Flush the spool and return its length."""
        self._file.flush()
        return self._file.tell()

    def finish(self) -> None:
        """Convert the spool into the Parquet file (atomically) and delete the spool."""
        self._file.flush()
        self._file.close()
        spool_to_parquet(self.spool, self.path)
        os.remove(self.spool)

    def abort(self) -> None:
        """Close the spool, keeping it for a resumed run."""
        self._file.close()


def spool_path(path: str) -> str:
    """Where a Parquet output's rows wait until the job finishes."""
    return f"{path}.spool.arrows"


def spool_to_parquet(spool: str, path: str) -> None:
    """Rewrite an Arrow IPC stream as Parquet in row groups of about ROW_GROUP_BYTES."""
    tmp = f"{path}.tmp"
    with pa.OSFile(spool, "rb") as source:
        reader = pa.ipc.open_stream(source)
        schema = reader.schema
        buffered: list[pa.RecordBatch] = []
        size = 0
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in reader:
                buffered.append(batch)
                size += batch.nbytes
                if size >= ROW_GROUP_BYTES:
                    writer.write_table(pa.Table.from_batches(buffered, schema))
                    buffered, size = [], 0
            if buffered:
                writer.write_table(pa.Table.from_batches(buffered, schema))
    os.replace(tmp, path)


class NpyWriter(TableWriter):
    """A float32 .npy of every (numeric) column; the row count is filled in at the end."""

    format = "npy"
    resumable = False
    _HEADER_BYTES = 128

    def __init__(self, path: str, schema: pa.Schema, resume_at: int | None = None) -> None:
        super().__init__(path, schema)
        if resume_at:
            raise VaeClientError("NPY output cannot be resumed; write CSV, JSONL or Parquet")
        bad = [f.name for f in schema if not (pa.types.is_floating(f.type) or _intlike(f.type))]
        if bad:
            raise VaeClientError(f"NPY output holds numbers only; columns {bad} are not numeric")
        self.width = len(schema)
        self._file = open(path, "wb")  # noqa: SIM115 - owned by the writer
        self._file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        d = {"descr": "<f4", "fortran_order": False, "shape": (rows, self.width)}
        text = repr(d).encode("latin1")
        pad = self._HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise VaeClientError("NPY header too long")
        body = text + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def write(self, table: pa.Table) -> None:
        """Append rows as float32."""
        if table.num_rows == 0:
            return
        out = np.empty((table.num_rows, self.width), dtype="<f4")
        for j in range(self.width):
            out[:, j] = table.column(j).to_numpy(zero_copy_only=False)
        self._file.write(out.tobytes())
        self.rows += table.num_rows

    def commit(self) -> int:
        """Flush (not resumable: the position is informational)."""
        self._file.flush()
        return self._file.tell()

    def finish(self) -> None:
        """Write the real row count into the header and close."""
        self._file.seek(0)
        self._file.write(self._header(self.rows))
        self._file.close()

    def abort(self) -> None:
        """Close; the file is left with a zero-row header."""
        self._file.close()


def _intlike(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_boolean(t))


def open_writer(
    path: str, fmt: str, schema: pa.Schema, *, resume_at: int | None = None
) -> TableWriter:
    """A writer of `fmt` for path; with resume_at, continue a committed prefix."""
    classes: dict[str, Any] = {
        "csv": CsvWriter,
        "jsonl": JsonlWriter,
        "parquet": ParquetWriter,
        "npy": NpyWriter,
    }
    if fmt not in classes:
        raise VaeClientError(f"output format {fmt!r} is not one of {', '.join(classes)}")
    if path != "-":
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise VaeClientError(f"{path}: the folder {parent} does not exist")
    try:
        return classes[fmt](path, schema, resume_at)
    except OSError as exc:
        raise VaeClientError(f"{path}: cannot write ({exc.strerror})") from None


def float_columns(matrix: np.ndarray) -> list[pa.Array]:
    """The columns of a row-major matrix as float32 Arrow arrays: one transposing copy, then
    views."""
    by_column = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32).T)
    return [pa.array(column) for column in by_column]


def write_tables(path: str, fmt: str, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Write tables as they come and finish the file; on any failure (Ctrl-C included) remove
    the partial output. Returns the rows written."""
    writer = open_writer(path, fmt, schema)
    rows = 0
    try:
        for table in tables:
            writer.write(table)
            rows += table.num_rows
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return rows
