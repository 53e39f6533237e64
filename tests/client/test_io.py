"""Readers and writers on their own (no server): chunking, skipping for resume, column selection,
formats, and resumable writers."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vaeserve.client import VaeClientError
from vaeserve.client.columns import parse_columns
from vaeserve.client.conditions import one_hot
from vaeserve.client.readers import CsvReader, detect_input_format, open_input
from vaeserve.client.transforms import lerp, slerp
from vaeserve.client.writers import detect_output_format, open_writer, spool_path

NAMES = ["a", "b", "c"]


def rows(n: int) -> np.ndarray:
    return np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 4


def csv_text(x: np.ndarray, extra: dict[int, str] | None = None) -> str:
    lines = ["id,a,b,c,tag"]
    for i, r in enumerate(x):
        lines.append(f"r{i}," + ",".join(repr(float(v)) for v in r) + ",t")
        if extra and i in extra:
            lines.append(extra[i])
    return "\n".join(lines) + "\n"


def collect(reader, batch_size: int, **kw):  # type: ignore[no-untyped-def]
    chunks = list(reader.chunks(batch_size, **kw))
    x = np.concatenate([c.rows for c in chunks]) if chunks else np.zeros((0, 3))
    return chunks, x


def test_formats_are_detected_from_names_or_options() -> None:
    assert detect_input_format("x.CSV") == "csv"
    assert detect_input_format("x.csv.gz") == "csv"
    assert detect_input_format("x.pq") == "parquet"
    assert detect_input_format("-") == "csv"
    assert detect_input_format("x.dat", "npy") == "npy"
    with pytest.raises(VaeClientError, match="input format"):
        detect_input_format("x.dat")
    assert detect_output_format("o.ndjson") == "jsonl"
    assert detect_output_format("-") == "csv"
    with pytest.raises(VaeClientError, match="stdout"):
        detect_output_format("-", "parquet")
    with pytest.raises(VaeClientError, match="not one of"):
        detect_output_format("o.npy", allowed=("csv",))


def test_parse_columns(tmp_path: Path) -> None:
    assert parse_columns("a, b,c") == ["a", "b", "c"]
    (tmp_path / "cols.txt").write_text("a\nb,c\n\n")
    assert parse_columns(f"@{tmp_path / 'cols.txt'}") == ["a", "b", "c"]
    with pytest.raises(VaeClientError, match="cannot read"):
        parse_columns(f"@{tmp_path / 'missing.txt'}")
    with pytest.raises(VaeClientError, match="no columns"):
        parse_columns(" , ")


@pytest.mark.parametrize("compressed", [False, True])
def test_csv_chunks_skip_and_malformed_lines(tmp_path: Path, compressed: bool) -> None:
    x = rows(25)
    text = csv_text(x, extra={4: "broken,1", 19: "too,many,fields,here,now,x"})
    path = tmp_path / ("in.csv.gz" if compressed else "in.csv")
    if compressed:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    reader = open_input(str(path), id_column="id", feature_names=NAMES, expected_dim=3)
    assert reader.features == NAMES and reader.aux_columns == ["id"]
    chunks, got = collect(reader, 10)
    np.testing.assert_array_equal(got, x)
    assert [c.start for c in chunks] == [0, 10, 20]
    assert chunks[0].aux is not None and chunks[0].aux.column("id").to_pylist()[:2] == ["r0", "r1"]
    bad = [m for c in chunks for m in c.malformed]
    assert [m.line for m in bad] == [7, 23]  # header is line 1, row i is line i + 2
    assert "2 fields" in bad[0].reason and "'broken,1'" in bad[0].reason
    # Resuming after 12 rows and the first malformed line: the rest, nothing twice.
    reader = open_input(str(path), id_column="id", feature_names=NAMES, expected_dim=3)
    chunks, got = collect(reader, 10, skip_rows=12, skip_malformed=1)
    np.testing.assert_array_equal(got, x[12:])
    assert chunks[0].start == 12 and chunks[0].aux.column("id").to_pylist()[0] == "r12"
    assert [m.line for c in chunks for m in c.malformed] == [23]


def test_csv_small_blocks_and_stdin(tmp_path: Path) -> None:
    x = rows(500)
    data = csv_text(x).encode()
    reader = CsvReader(
        "-", stdin=io.BufferedReader(io.BytesIO(data)), block_bytes=777, columns=NAMES
    )
    chunks, got = collect(reader, 64)
    np.testing.assert_array_equal(got, x)
    assert all(len(c) == 64 for c in chunks[:-1])
    with pytest.raises(VaeClientError, match="once"):
        list(reader.chunks(64))


def test_csv_header_problems(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(VaeClientError, match="no header"):
        open_input(str(tmp_path / "empty.csv"))
    (tmp_path / "dupe.csv").write_text("a,a,b\n1,2,3\n")
    with pytest.raises(VaeClientError, match="repeats"):
        open_input(str(tmp_path / "dupe.csv"))
    (tmp_path / "header.csv").write_text("a,b,c\n")
    reader = open_input(str(tmp_path / "header.csv"), expected_dim=3)
    assert list(reader.chunks(10)) == []
    (tmp_path / "tsv.tsv").write_text("a\tb\tc\n1\t2\t3\n")
    _, got = collect(open_input(str(tmp_path / "tsv.tsv"), expected_dim=3), 10)
    np.testing.assert_array_equal(got, [[1, 2, 3]])


def test_parquet_skips_whole_row_groups_and_slices(tmp_path: Path) -> None:
    x = rows(1000)
    table = pa.table(
        {"id": np.arange(1000), **{n: x[:, j].astype(np.float64) for j, n in enumerate(NAMES)}}
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=128)
    reader = open_input(str(tmp_path / "in.parquet"), id_column="id", expected_dim=3)
    assert reader.num_rows == 1000
    for skip in (0, 127, 128, 300, 999, 1000):
        chunks, got = collect(reader, 100, skip_rows=skip)
        np.testing.assert_array_equal(got, x[skip:])
        if chunks:
            assert chunks[0].start == skip
            assert chunks[0].aux.column("id").to_pylist()[0] == skip
    with pytest.raises(VaeClientError, match="checkpoint"):
        collect(reader, 100, skip_rows=1001)


def test_npy_reads_slices_big_endian_and_fortran(tmp_path: Path) -> None:
    x = rows(300).astype(np.float64)
    np.save(tmp_path / "be.npy", x.astype(">f8"))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "i.npy", (x * 4).astype(np.int32))
    for name, expected in (("be", x), ("f", x), ("i", x * 4)):
        reader = open_input(str(tmp_path / f"{name}.npy"), expected_dim=3)
        chunks, got = collect(reader, 64, skip_rows=10)
        np.testing.assert_array_equal(got, expected[10:].astype(np.float32))
        assert chunks[0].start == 10 and got.dtype == np.float32
    reader = open_input(str(tmp_path / "be.npy"), columns=["2", "0-1"], expected_dim=3)
    _, got = collect(reader, 1000)
    np.testing.assert_array_equal(got, x[:, [2, 0, 1]].astype(np.float32))
    reader = open_input(str(tmp_path / "be.npy"), columns=["1:"], keep_columns=True)
    chunks, got = collect(reader, 1000)
    np.testing.assert_array_equal(got, x[:, 1:].astype(np.float32))
    assert chunks[0].aux.column_names == ["x0", "x1", "x2"]
    with pytest.raises(VaeClientError, match="outside"):
        open_input(str(tmp_path / "be.npy"), columns=["7"])
    np.save(tmp_path / "s.npy", np.array(["a", "b"]).reshape(2, 1))
    with pytest.raises(VaeClientError, match="numeric"):
        open_input(str(tmp_path / "s.npy"))


def test_chunks_together_hold_every_row(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", rows(10))
    with open_input(str(tmp_path / "x.npy")) as reader:
        chunks, got = collect(reader, 3)
    np.testing.assert_array_equal(got, rows(10))
    assert all(c.aux is None for c in chunks)


SCHEMA = pa.schema(
    [("row", pa.int64()), ("v", pa.float32()), ("flag", pa.bool_()), ("s", pa.string())]
)


def table(start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "row": np.arange(start, start + n),
            "v": (np.arange(start, start + n) / 3).astype(np.float32),
            "flag": np.arange(n) % 2 == 0,
            "s": [f"x{i}" for i in range(start, start + n)],
        },
        schema=SCHEMA,
    )


def read_back(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        return pa.table({k: [r[k] for r in recs] for k in SCHEMA.names})
    import pyarrow.csv as pacsv

    types = {"v": pa.float32(), "s": pa.string()}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_writers_resume_from_a_committed_position(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    writer = open_writer(str(out), fmt, SCHEMA)
    writer.write(table(0, 10))
    position = writer.commit()
    writer.write(table(10, 5))  # written but never committed: must not survive
    writer.abort()
    writer = open_writer(str(out), fmt, SCHEMA, resume_at=position)
    writer.write(table(10, 20))
    writer.finish()
    got = read_back(out, fmt)
    assert got.column("row").to_pylist() == list(range(30))
    np.testing.assert_array_equal(
        got.column("v").to_numpy().astype(np.float32), table(0, 30).column("v").to_numpy()
    )
    assert got.column("s").to_pylist()[-1] == "x29"
    assert not Path(spool_path(str(out))).exists()


def test_writer_resume_checks(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    with pytest.raises(VaeClientError, match="gone"):
        open_writer(str(out), "csv", SCHEMA, resume_at=100)
    out.write_text("short")
    with pytest.raises(VaeClientError, match="committed"):
        open_writer(str(out), "csv", SCHEMA, resume_at=100)
    with pytest.raises(VaeClientError, match="does not exist"):
        open_writer(str(tmp_path / "no" / "o.csv"), "csv", SCHEMA)


def test_jsonl_writes_nan_as_null_and_npy_fills_in_the_row_count(tmp_path: Path) -> None:
    schema = pa.schema([("v", pa.float64()), ("w", pa.float32())])
    writer = open_writer(str(tmp_path / "o.jsonl"), "jsonl", schema)
    writer.write(pa.table({"v": [1.5, float("nan")], "w": pa.array([np.inf, 2], pa.float32())}))
    writer.finish()
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert lines == [{"v": 1.5, "w": None}, {"v": None, "w": 2}]
    writer = open_writer(str(tmp_path / "o.npy"), "npy", schema)
    for _ in range(3):
        writer.write(pa.table({"v": [1.0, 2.0], "w": pa.array([3, 4], pa.float32())}))
    writer.finish()
    got = np.load(tmp_path / "o.npy")
    assert got.shape == (6, 2) and got.dtype == np.float32
    with pytest.raises(VaeClientError, match="numbers only"):
        open_writer(str(tmp_path / "s.npy"), "npy", pa.schema([("s", pa.string())]))


def test_interpolation_paths_and_one_hot() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 2.0], np.float32)
    t = np.linspace(0, 1, 5)
    line = lerp(a, b, t)
    np.testing.assert_allclose(line[[0, -1]], [a, b])
    np.testing.assert_allclose(line[2], (a + b) / 2)
    arc = slerp(a, b, t)
    np.testing.assert_allclose(arc[[0, -1]], [a, b], atol=1e-6)
    # The midpoint of a quarter turn lies at 45 degrees.
    assert abs(arc[2][0] * 2 - arc[2][1]) < 1e-5
    np.testing.assert_allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))  # parallel: a line
    onehot, known = one_hot(pa.array(["b", "z", None, "a"]), ["a", "b"])
    np.testing.assert_array_equal(onehot, [[0, 1], [0, 0], [0, 0], [1, 0]])
    np.testing.assert_array_equal(known, [True, False, False, True])
