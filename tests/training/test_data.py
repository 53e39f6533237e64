"""Loading user data: formats, column selection, and clear errors for bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import quick_config
from vaeserve.training import DataError, load_dataset, one_class_split, train
from vaeserve.training.data import check_finite, load_builtin


@pytest.fixture
def table() -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(40)],
            "a": rng.standard_normal(40),
            "b": rng.standard_normal(40).astype(np.float32),
            "c": rng.integers(0, 5, 40),
            "kind": ["x" if i % 4 else "y" for i in range(40)],
        }
    )


def test_csv_and_parquet_load_the_same(tmp_path: Path, table: pa.Table) -> None:
    pcsv.write_csv(table, tmp_path / "t.csv")
    pq.write_table(table, tmp_path / "t.parquet")
    for f in ("t.csv", "t.parquet"):
        ds = load_dataset(str(tmp_path / f), label_column="kind", id_column="id")
        assert ds.feature_names == ["a", "b", "c"]
        assert ds.x.shape == (40, 3) and ds.x.dtype == np.float32
        np.testing.assert_allclose(ds.x[:, 0], table["a"].to_numpy(), rtol=1e-6)
        assert ds.ids[3] == "r3" and set(ds.labels) == {"x", "y"}
    ds = load_dataset(str(tmp_path / "t.csv"), columns=["c", "a"])
    assert ds.feature_names == ["c", "a"]


def test_npy_npz(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=np.array([0, 1, 0, 1]))
    assert load_dataset(str(tmp_path / "x.npy")).x.shape == (4, 3)
    ds = load_dataset(str(tmp_path / "x.npz"))
    assert list(ds.labels) == ["0", "1", "0", "1"]


def test_bad_inputs_say_what_to_fix(tmp_path: Path, table: pa.Table) -> None:
    pcsv.write_csv(table, tmp_path / "t.csv")
    with pytest.raises(DataError, match="no column 'nope'"):
        load_dataset(str(tmp_path / "t.csv"), columns=["nope"])
    with pytest.raises(DataError, match="non-numeric columns id, kind"):
        load_dataset(str(tmp_path / "t.csv"))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="unknown builtin"):
        load_dataset("builtin:mnist")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(str(tmp_path / "x.txt"))


def test_nan_rows_error_or_drop(tmp_path: Path) -> None:
    x = np.ones((50, 4), dtype=np.float32)
    x[7, 1] = np.nan
    x[20, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError, match=r"2 rows hold NaN or inf \(first: row 7\)"):
        train(quick_config(tmp_path / "r", data=str(tmp_path / "bad.npy"), epochs=1))
    ds = check_finite(load_dataset(str(tmp_path / "bad.npy")), drop_invalid=True)
    assert len(ds) == 48


def test_builtins_and_one_class_split() -> None:
    digits = load_builtin("digits")
    assert digits.x.shape == (1797, 64)
    big = load_builtin("digits784")
    assert big.x.shape == (1797, 784)
    # the upsampling keeps the image's overall brightness profile
    assert np.corrcoef(digits.x.sum(1), big.x.sum(1))[0, 1] > 0.99
    assert load_builtin("breast_cancer").x.shape == (569, 30)
    train_ds, test_ds = one_class_split(digits, "0", seed=0)
    assert set(train_ds.labels) == {"0"}
    assert len(train_ds) + len(test_ds) == 1797
    assert (test_ds.labels == "0").sum() == len(train_ds) or (test_ds.labels == "0").sum() == len(
        train_ds
    ) + 1
