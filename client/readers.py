"""Chunked input readers with bounded memory: `open_input` picks CSV (client/csv_reader.py,
file or stdin), Parquet or NPY (here).

Each reader yields `InputChunk`s of at most `batch_size` rows: the selected feature columns as a
float32 matrix (NaN where a value is missing), plus an Arrow table of the other columns a job
needs (id, condition, or every input column when they are kept). CSV is parsed block by block
(pyarrow's streaming reader), Parquet read batch by batch, and NPY read a slice at a time, so
the memory in use depends on the batch size, never on the file size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaeserve.client.columns import ColumnSelection, short_list
from vaeserve.client.csv_reader import CsvReader
from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import is_uri, open_input_file
from vaeserve.client.reader_base import (
    InputChunk,
    InputReader,
    Malformed,
    rebatch,
)

INPUT_FORMATS = ("csv", "parquet", "npy")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def detect_input_format(path: str, fmt: str | None = None) -> str:
    """The input format from --input-format or the file name; '-' (stdin) is CSV."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in INPUT_FORMATS:
            raise VaeClientError(f"input format {fmt!r} is not one of {', '.join(INPUT_FORMATS)}")
        return fmt
    if path == "-":
        return "csv"
    name = path.lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    suffix = os.path.splitext(name)[1]
    if suffix not in _SUFFIXES:
        raise VaeClientError(
            f"{path}: cannot tell the input format from the extension {suffix or '(none)'!r}; "
            f"use .csv, .parquet or .npy, or pass --input-format"
        )
    return _SUFFIXES[suffix]


class ParquetReader(InputReader):
    """Parquet read batch by batch with buffered (not pre-loaded) column reads."""

    format = "parquet"

    def __init__(self, path: str, selection: ColumnSelection | None = None, **select: Any) -> None:
        """Open the file and resolve the columns; `select` are ColumnSelection's fields."""
        super().__init__(path)
        self._require_file()
        try:
            self._source = open_input_file(path)
            self._file = pq.ParquetFile(self._source, buffer_size=64 << 10, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise VaeClientError(f"{path}: not a readable Parquet file ({exc})") from None
        schema = self._file.schema_arrow
        names = list(schema.names)
        self.columns = names
        self.features, self.aux_columns = ColumnSelection.of(selection, **select).resolve(
            names, path
        )
        not_numeric = [
            f"{c} ({schema.field(c).type})"
            for c in self.features
            if not _numeric(schema.field(c).type)
        ]
        if not_numeric:
            raise VaeClientError(
                f"{path}: feature columns must be numeric; these are not: {short_list(not_numeric)}"
            )
        self.num_rows = self._file.metadata.num_rows

    def chunks(
        self, batch_size: int, skip_rows: int = 0, skip_malformed: int = 0
    ) -> Iterator[InputChunk]:
        """Iterate row groups from the first one not yet done (see InputReader.chunks)."""
        meta = self._file.metadata
        first, before = 0, 0
        while first < meta.num_row_groups and before + meta.row_group(first).num_rows <= skip_rows:
            before += meta.row_group(first).num_rows
            first += 1
        if skip_rows > (self.num_rows or 0):
            raise VaeClientError(
                f"{self.path} has {self.num_rows} rows but the checkpoint says {skip_rows} were "
                "done; was the input changed since the interrupted run?"
            )
        wanted = list(dict.fromkeys(self.features + self.aux_columns))
        groups = list(range(first, meta.num_row_groups))
        # Decoding in larger batches is much faster for wide files; ~4 MiB of values each.
        read_rows = max(batch_size, min(65536, (4 << 20) // (4 * max(1, len(wanted)))))
        if not groups:
            return

        def pieces() -> Iterator[tuple[pa.RecordBatch, list[Malformed]]]:
            try:
                yield from (
                    (b, [])
                    for b in self._file.iter_batches(
                        batch_size=read_rows, row_groups=groups, columns=wanted
                    )
                )
            except (pa.ArrowInvalid, OSError) as exc:
                raise VaeClientError(f"{self.path}: cannot read Parquet data ({exc})") from None

        # rebatch skips rows counted from its own position 0, here the first group's start.
        for chunk in rebatch(
            pieces(), self.features, self.aux_columns, batch_size, skip_rows - before
        ):
            chunk.start += before
            yield chunk

    def column_types(self, names: Sequence[str]) -> dict[str, pa.DataType]:
        """The file's Arrow types (dictionary columns as their value type)."""
        schema = self._file.schema_arrow
        types = {}
        for c in names:
            t = schema.field(c).type
            types[c] = t.value_type if pa.types.is_dictionary(t) else t
        return types

    def close(self) -> None:
        """Close the Parquet file."""
        self._file.close()
        if not isinstance(self._source, str):
            self._source.close()


def _numeric(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
    )


class NpyReader(InputReader):
    """A 2-D .npy array read a slice at a time with plain reads (no whole-file mapping)."""

    format = "npy"

    def __init__(self, path: str, selection: ColumnSelection | None = None, **select: Any) -> None:
        """Read the header and resolve the column indices; `select` are ColumnSelection's
        fields (an NPY file has no id or condition column)."""
        super().__init__(path)
        selected = ColumnSelection.of(selection, **select)
        if selected.named:
            option = "--id-column" if selected.id_column else "--condition-column"
            raise VaeClientError(
                f"{path}: {option} needs a CSV or Parquet input; an NPY file has no named columns"
            )
        if is_uri(path):
            raise VaeClientError(f"{path}: NPY input is read from local files only")
        self._require_file()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            version = np.lib.format.read_magic(self._file)
            shape, fortran, dtype = _read_npy_header(self._file, version)
        except (ValueError, OSError) as exc:
            self._file.close()
            raise VaeClientError(f"{path}: not a readable .npy file ({exc})") from None
        if len(shape) != 2:
            self._file.close()
            raise VaeClientError(
                f"{path}: the array has shape {list(shape)}; scoring needs a 2-D [rows, features] "
                "array"
            )
        if (
            dtype.hasobject
            or dtype.fields is not None
            or not (np.issubdtype(dtype, np.number) or dtype == np.bool_)
        ):
            self._file.close()
            raise VaeClientError(f"{path}: dtype {dtype} is not a plain numeric type")
        self._offset = self._file.tell()
        self._dtype = dtype
        self._fortran = fortran
        self.num_rows, self.width = int(shape[0]), int(shape[1])
        self.columns = [f"x{i}" for i in range(self.width)]
        self._index = selected.indices(self.width, path)
        expected_dim = selected.expected_dim
        if expected_dim is not None and len(self._index) != expected_dim:
            raise VaeClientError(
                f"{path}: {len(self._index)} feature columns selected but the model expects "
                f"{expected_dim}; pick them with --columns (e.g. --columns 0:{expected_dim})"
            )
        self.features = [self.columns[i] for i in self._index]
        self._keep = selected.keep_columns
        self.aux_columns = list(self.columns) if self._keep else []

    def _read(self, start: int, n: int) -> np.ndarray:
        if self._fortran:  # column-major on disk: a row slice is strided, so map the file
            array = np.load(self.path, mmap_mode="r")
            return np.array(array[start : start + n])
        row_bytes = self._dtype.itemsize * self.width
        self._file.seek(self._offset + start * row_bytes)
        data = np.fromfile(self._file, dtype=self._dtype, count=n * self.width)
        if data.size != n * self.width:
            raise VaeClientError(f"{self.path}: the file is shorter than its header says")
        return data.reshape(n, self.width)

    def chunks(
        self, batch_size: int, skip_rows: int = 0, skip_malformed: int = 0
    ) -> Iterator[InputChunk]:
        """Slices of batch_size rows from row skip_rows on (see InputReader.chunks)."""
        total = self.num_rows or 0
        if skip_rows > total:
            raise VaeClientError(
                f"{self.path} has {total} rows but the checkpoint says {skip_rows} were done; "
                "was the input changed since the interrupted run?"
            )
        batch_size = max(1, batch_size)
        identity = self._index == list(range(self.width))
        for start in range(skip_rows, total, batch_size):
            n = min(batch_size, total - start)
            block = self._read(start, n)
            rows = block if identity else block[:, self._index]
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            aux = None
            if self._keep:
                native = block.astype(self._dtype.newbyteorder("="), copy=False)
                aux = pa.table({name: native[:, i] for i, name in enumerate(self.columns)})
            yield InputChunk(start, rows, aux)

    def column_types(self, names: Sequence[str]) -> dict[str, pa.DataType]:
        """Every column has the array's dtype."""
        return dict.fromkeys(names, pa.from_numpy_dtype(self._dtype.newbyteorder("=")))

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _read_npy_header(f: BinaryIO, version: tuple[int, int]) -> tuple[Any, bool, np.dtype]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]


def open_input(
    path: str,
    selection: ColumnSelection | None = None,
    *,
    fmt: str | None = None,
    stdin: BinaryIO | None = None,
    **select: Any,
) -> InputReader:
    """Open an input for chunked reading; `select` are ColumnSelection's fields (columns,
    id_column, ...) when no `selection` is given. VaeClientError explains any problem."""
    kind = detect_input_format(path, fmt)
    if path == "-" and kind != "csv":
        raise VaeClientError("stdin ('-') is read as CSV only")
    selected = ColumnSelection.of(selection, **select)
    if kind == "csv":
        return CsvReader(path, selected, stdin=stdin)
    if kind == "parquet":
        return ParquetReader(path, selected)
    return NpyReader(path, selected)


__all__ = [
    "INPUT_FORMATS",
    "ColumnSelection",
    "CsvReader",
    "InputChunk",
    "InputReader",
    "Malformed",
    "NpyReader",
    "ParquetReader",
    "detect_input_format",
    "open_input",
]
