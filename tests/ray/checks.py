"""What a finished (or interrupted) dataset job's output folder must satisfy, read back from
disk: committed parts vouched for by their markers, every input row exactly once, input order
within each file."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vaeserve.client.dataset_output import PartResult


def markers(out: Path) -> list[PartResult]:
    """The committed parts' results, in input order (file, then first row)."""
    found = [
        PartResult.from_dict(json.loads(p.read_text()))
        for p in sorted((out / "_committed").glob("*.json"))
    ]
    return sorted(found, key=lambda r: (r.input, r.start))


def read_part(out: Path, result: PartResult) -> pa.Table:
    """One committed part's output."""
    path = out / result.output
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    return pq.read_table(path)


def by_file(out: Path) -> dict[str, pa.Table]:
    """Each input file's output rows: its committed parts in order, concatenated."""
    tables: dict[str, list[pa.Table]] = {}
    for r in markers(out):
        tables.setdefault(r.input, []).append(read_part(out, r))
    return {k: pa.concat_tables(v) for k, v in tables.items()}


def rejected_ids(out: Path) -> list[str]:
    """The ids in the job's merged rejects file (none when it has no rejects)."""
    path = out / "_rejects.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [row["id"] for row in csv.DictReader(f)]


def check_committed(out: Path, settled: bool = True) -> set[str]:
    """Every marker vouches for files that are there with its size and sha256. A settled
    folder (a run ended) has no other part files and no attempt in progress; an unsettled one
    (a run died) may have files no marker vouches for, which do not count and which a resume
    deletes: returns their names."""
    results = markers(out)
    vouched = {r.output for r in results} | {r.rejects_file for r in results if r.rejects_file}
    for r in results:
        data = (out / r.output).read_bytes()
        assert len(data) == r.output_bytes
        assert hashlib.sha256(data).hexdigest() == r.sha256
    on_disk = {p.name for p in out.glob("part-*")} | {
        f"_rejects/{p.name}" for p in (out / "_rejects").glob("part-*")
    }
    assert vouched <= on_disk
    if settled:
        assert on_disk == vouched, f"files without a marker: {on_disk - vouched}"
        assert not (out / "_temporary").exists()
    return on_disk - vouched


def check_exactly_once(out: Path, expected_ids: list[str], rejected: list[str]) -> None:
    """A finished job: committed parts only, each expected id exactly once across outputs and
    rejects (the `rejected` ones in the rejects), ids in input order within each file."""
    check_committed(out)
    assert (out / "_SUCCESS").exists()
    scored: list[str] = []
    for table in by_file(out).values():
        ids = table.column("id").to_pylist()
        assert ids == sorted(ids), "rows out of input order within a file"
        scored += ids
    bad = rejected_ids(out)
    assert sorted(bad) == sorted(rejected)
    everything = scored + bad
    assert len(everything) == len(set(everything)), "an id appears twice"
    assert sorted(everything) == sorted(expected_ids)
