"""Parts: the units a dataset job scores, commits and resumes. A part is one input file, or
with `rows_per_part` a run of whole row groups of a Parquet file, so one large file can be
scored by several workers. Each part gets one output file, `part-<digest>.FORMAT`, named by its
input path and row range, so the name stays the same when other inputs come or go.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pyarrow.parquet as pq

from vaeserve.client.dataset_files import DatasetFile
from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import open_input_file


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of one input file (stop None: to its end); `index` is its place in
    this run's plan."""

    index: int
    path: str
    format: str
    size: int
    start: int = 0
    stop: int | None = None

    @property
    def name(self) -> str:
        """The part's output name without the format's extension (see the module docstring)."""
        key = f"{self.path}\0{self.start}\0{self.stop}".encode()
        return f"part-{hashlib.sha1(key).hexdigest()[:16]}"

    def to_json(self) -> str:
        """The part as a JSON string (how it travels to Ray workers)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Part:
        """The part that `to_json` wrote."""
        return cls(**json.loads(text))


def plan_parts(files: Sequence[DatasetFile], rows_per_part: int | None = None) -> list[Part]:
    """The parts of a dataset in file order: one per file, or (with rows_per_part) Parquet
    files cut at row-group boundaries into parts of at least rows_per_part rows."""
    parts: list[Part] = []
    for f in files:
        ranges = _row_ranges(f, rows_per_part) if rows_per_part and f.format == "parquet" else []
        if len(ranges) <= 1:
            parts.append(Part(len(parts), f.path, f.format, f.size))
            continue
        for start, stop in ranges:
            parts.append(Part(len(parts), f.path, f.format, f.size, start, stop))
    return parts


def _row_ranges(f: DatasetFile, rows_per_part: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of whole row groups, each at least rows_per_part rows (the
    last may be shorter), read from the file's footer."""
    source = open_input_file(f.path)
    try:
        meta = pq.read_metadata(source)
    except (OSError, ValueError) as exc:
        raise VaeClientError(f"{f.path}: not a readable Parquet file ({exc})") from None
    finally:
        if not isinstance(source, str):
            source.close()
    ranges: list[tuple[int, int]] = []
    start = end = 0
    for g in range(meta.num_row_groups):
        end += meta.row_group(g).num_rows
        if end - start >= rows_per_part:
            ranges.append((start, end))
            start = end
    if end > start:
        ranges.append((start, end))
    return ranges
