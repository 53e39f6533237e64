"""Chunked input readers for CSV (file or stdin), Parquet and NPY with bounded memory.

Each reader yields `InputChunk`s of at most `batch_size` rows: the selected feature columns as a
float32 matrix (NaN where a value is missing), plus an Arrow table of the other columns a job
needs (id, condition, or every input column when they are kept). CSV is parsed block by block
(pyarrow's streaming reader), Parquet read batch by batch, and NPY read a slice at a time, so
the memory in use depends on the batch size, never on the file size.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vaeserve.client.columns import ColumnSelection, short_list
from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import file_size, is_uri, open_input_file, open_input_stream

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
CSV_BLOCK_BYTES = 4 << 20


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


class CsvReader(InputReader):
    """CSV from a file (optionally compressed) or stdin, parsed block by block."""

    format = "csv"

    def __init__(
        self,
        path: str,
        selection: ColumnSelection | None = None,
        *,
        delimiter: str | None = None,
        block_bytes: int = CSV_BLOCK_BYTES,
        stdin: BinaryIO | None = None,
        **select: Any,
    ) -> None:
        """Read the header and resolve the columns; `select` are ColumnSelection's fields."""
        super().__init__(path)
        self.where = "stdin" if path == "-" else path
        if delimiter is None:
            delimiter = "\t" if ".tsv" in path.lower() else ","
        self.delimiter = delimiter
        self.block_bytes = block_bytes
        self._stdin = stdin if stdin is not None else (sys.stdin.buffer if path == "-" else None)
        if path != "-":
            self._require_file()
        header = self._read_header()
        names = next(csv.reader([header], delimiter=delimiter), [])
        names = [n.strip() for n in names]
        if not names or names == [""]:
            raise VaeClientError(f"{self.where}: the CSV has no header line")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise VaeClientError(f"{self.where}: the CSV header repeats columns {dupes}")
        self.columns = names
        selected = ColumnSelection.of(selection, **select)
        self.features, self.aux_columns = selected.resolve(names, self.where)
        self._consumed = False

    def _read_header(self) -> str:
        if self._stdin is not None:
            raw = self._stdin.readline()
        else:
            with open_input_stream(self.path) as stream:
                raw = b""
                while b"\n" not in raw:
                    block = stream.read(1 << 16)
                    if not block:
                        break
                    raw += block
                    if len(raw) > 64 << 20:
                        raise VaeClientError(f"{self.where}: the first line is over 64 MiB")
                raw = raw.split(b"\n", 1)[0]
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise VaeClientError(f"{self.where}: the header is not UTF-8 text") from None
        return text.rstrip("\r\n")

    def chunks(
        self, batch_size: int, skip_rows: int = 0, skip_malformed: int = 0
    ) -> Iterator[InputChunk]:
        """Parse blocks and re-cut them into batch_size chunks (see InputReader.chunks)."""
        if self._consumed and self._stdin is not None:
            raise VaeClientError("stdin can be read only once")
        self._consumed = True
        malformed: list[Malformed] = []
        to_skip = skip_malformed
        first_line = 2  # file line number of the block being parsed (the header is line 1)

        def on_invalid(row: Any) -> str:
            nonlocal to_skip
            if to_skip > 0:
                to_skip -= 1
                return "skip"
            text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
            line = first_line + row.number - 1 if row.number is not None else None
            where = f"line {line}" if line is not None else "a line"
            malformed.append(
                Malformed(
                    line,
                    f"{where} has {row.actual_columns} fields where the header has "
                    f"{row.expected_columns}: {text!r}",
                )
            )
            return "skip"

        wanted = list(dict.fromkeys(self.features + self.aux_columns))
        types = {c: pa.string() for c in wanted}
        types.update({c: pa.float32() for c in self.features})
        # One block at a time, parsed whole: pyarrow's streaming reader reads far ahead of
        # its consumer (tens of blocks), which would make memory grow with the file.
        read_options = pacsv.ReadOptions(column_names=self.columns, use_threads=False)
        parse_options = pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=on_invalid)
        convert_options = pacsv.ConvertOptions(
            column_types=types, include_columns=wanted, strings_can_be_null=False
        )

        def pieces() -> Iterator[tuple[pa.RecordBatch | None, list[Malformed]]]:
            nonlocal first_line
            for block in self._blocks():
                if block.strip():
                    try:
                        table = pacsv.read_csv(
                            pa.BufferReader(pa.py_buffer(block)),
                            read_options=read_options,
                            parse_options=parse_options,
                            convert_options=convert_options,
                        )
                    except pa.ArrowInvalid as exc:
                        raise self._error(exc, first_line) from None
                    for batch in table.to_batches():
                        yield batch, []
                first_line += block.count(b"\n")
                if malformed:
                    yield None, malformed[:]
                    malformed.clear()

        yield from _rebatch(pieces(), self.features, self.aux_columns, batch_size, skip_rows)

    def _blocks(self) -> Iterator[bytes]:
        """The data after the header as blocks of whole lines (about block_bytes each)."""
        if self._stdin is not None:
            source: Any = _Incremental(self._stdin)
        else:
            try:
                source = open_input_stream(self.path)
            except OSError as exc:
                raise VaeClientError(f"{self.where}: {exc}") from None
        header_pending = self._stdin is None
        rest = b""
        try:
            while True:
                try:
                    data = source.read(self.block_bytes)
                except OSError as exc:
                    raise VaeClientError(f"{self.where}: read failed ({exc})") from None
                buffer = rest + data if rest else data
                if header_pending:
                    cut = buffer.find(b"\n")
                    if cut < 0 and data:
                        rest = buffer
                        continue
                    buffer = buffer[cut + 1 :] if cut >= 0 else b""
                    header_pending = False
                if not data:
                    if buffer:
                        yield buffer
                    return
                cut = buffer.rfind(b"\n") + 1
                rest = buffer[cut:]
                if cut:
                    yield buffer[:cut]
        finally:
            if self._stdin is None:
                source.close()

    def _error(self, exc: Exception, first_line: int) -> VaeClientError:
        text = str(exc)
        hint = ""
        if "conversion error to float" in text or "invalid value" in text:
            hint = "; a feature column holds text that is not a number (check --columns)"
        return VaeClientError(
            f"{self.where}: cannot parse the CSV block from line {first_line}: {text}{hint}"
        )


class _Incremental(io.RawIOBase):
    """A pipe whose reads return what has arrived instead of waiting for a full block.

    pyarrow asks for whole blocks; on a pipe, BufferedReader.read(n) would wait for n bytes,
    so rows written slowly (a live feed on stdin) would sit unscored until a block filled.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        read1 = getattr(self._stream, "read1", None)
        if read1 is None or size is None or size < 0:
            return self._stream.read(size)
        return read1(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _features_matrix(batch: pa.RecordBatch | pa.Table, features: Sequence[str]) -> np.ndarray:
    """The feature columns of an Arrow batch as a C-ordered float32 matrix, NaN for nulls."""
    # Columns are filled as contiguous rows of the transpose, then transposed in one copy.
    out = np.empty((len(features), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        column = batch.column(name)
        if column.type != pa.float32():
            column = column.cast(pa.float32(), safe=False)
        out[j] = column.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(out.T)


def _rebatch(
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
        rows = _features_matrix(batch, features)
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

        # _rebatch skips rows counted from its own position 0, here the first group's start.
        for chunk in _rebatch(
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
