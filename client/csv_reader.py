"""The CSV reader: a file (optionally compressed) or stdin, parsed block by block with
pyarrow, malformed lines counted and reported instead of stopping the job."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from vaeserve.client.columns import ColumnSelection
from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import open_input_stream
from vaeserve.client.reader_base import InputChunk, InputReader, Malformed, rebatch

CSV_BLOCK_BYTES = 4 << 20


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

        yield from rebatch(pieces(), self.features, self.aux_columns, batch_size, skip_rows)

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
