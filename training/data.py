"""Training data: bundled real data sets, CSV/Parquet/NumPy files, validation and splits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

BUILTINS = ("digits", "digits784", "breast_cancer")


class DataError(ValueError):
    """Data that cannot be trained on; the message says what to change."""


@dataclass
class Dataset:
    x: np.ndarray  # float32 [n, d]
    feature_names: list[str]
    labels: np.ndarray | None = None  # str [n]
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> Dataset:
        return replace(
            self,
            x=self.x[index],
            labels=None if self.labels is None else self.labels[index],
            ids=None if self.ids is None else self.ids[index],
        )


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """Bilinear interpolation weights [dst, src] (pixel centres aligned)."""
    pos = (np.arange(dst) + 0.5) * src / dst - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, src - 1)
    hi = np.clip(lo + 1, 0, src - 1)
    frac = np.clip(pos - lo, 0.0, 1.0)
    w = np.zeros((dst, src))
    w[np.arange(dst), lo] += 1.0 - frac
    w[np.arange(dst), hi] += frac
    return w


def load_builtin(name: str) -> Dataset:
    """scikit-learn's bundled data sets (no download): digits, breast_cancer, and
    digits784, the 8x8 digits upsampled bilinearly to 28x28 (784 features)."""
    from sklearn import datasets

    if name in ("digits", "digits784"):
        bunch = datasets.load_digits()
        x = bunch.data.astype(np.float64)
        if name == "digits784":
            w = _upsample_matrix(8, 28)
            x = np.einsum("ij,njk,lk->nil", w, x.reshape(-1, 8, 8), w).reshape(-1, 784)
            names = [f"pixel_{i // 28}_{i % 28}" for i in range(784)]
        else:
            names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
        labels = bunch.target.astype(str)
    elif name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
        x = bunch.data
        names = [str(n) for n in bunch.feature_names]
        labels = np.asarray(bunch.target_names)[bunch.target].astype(str)  # malignant/benign
    else:
        raise DataError(f"unknown builtin data set {name!r}; choose one of {', '.join(BUILTINS)}")
    return Dataset(x.astype(np.float32), names, labels, np.arange(len(x)).astype(str))


def _from_table(
    table, columns: list[str] | None, label_column: str | None, id_column: str | None, src: str
) -> Dataset:
    names = table.column_names
    for col in [*(columns or []), label_column, id_column]:
        if col is not None and col not in names:
            raise DataError(f"{src}: no column {col!r}; columns are {', '.join(names)}")
    reserved = {label_column, id_column}
    if columns is None:
        columns = [c for c in names if c not in reserved]
        import pyarrow.types as pt

        bad = [
            c
            for c in columns
            if not (pt.is_integer(table[c].type) or pt.is_floating(table[c].type))
        ]
        if bad:
            raise DataError(
                f"{src}: non-numeric columns {', '.join(bad)}; choose features with --columns "
                "or name the label/id column with --label-column/--id-column"
            )
    if not columns:
        raise DataError(f"{src}: no feature columns left")
    try:
        x = np.column_stack([table[c].to_numpy(zero_copy_only=False) for c in columns])
        x = x.astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{src}: feature columns must be numeric ({exc})") from exc
    labels = None if label_column is None else table[label_column].to_numpy(False).astype(str)
    ids = None if id_column is None else table[id_column].to_numpy(False).astype(str)
    return Dataset(x, list(columns), labels, ids)


def load_dataset(
    source: str,
    columns: list[str] | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> Dataset:
    """Load `builtin:NAME`, a .csv, .parquet, .npy or .npz file (npz: arrays x, optional y)."""
    if source.startswith("builtin:"):
        return load_builtin(source.split(":", 1)[1])
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        return _from_table(table, columns, label_column, id_column, source)
    if suffix in (".npy", ".npz"):
        labels = None
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z:
                    raise DataError(f"{source}: an .npz needs an array named x (and optional y)")
                x = z["x"]
                labels = z["y"].astype(str) if "y" in z else None
        if x.ndim != 2:
            raise DataError(f"{source}: expected a 2-D array [rows, features], got {x.shape}")
        names = [f"f{i}" for i in range(x.shape[1])]
        return Dataset(x.astype(np.float32), names, labels, None)
    raise DataError(f"{source}: unsupported file type {suffix!r}; use .csv, .parquet, .npy, .npz")


def check_finite(data: Dataset, drop_invalid: bool) -> Dataset:
    """Refuse (or with drop_invalid, drop) rows holding NaN or inf."""
    bad = ~np.isfinite(data.x).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    if not drop_invalid:
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{n_bad} rows hold NaN or inf (first: row {first}); clean them or pass "
            "--drop-invalid to drop them"
        )
    return data.take(np.flatnonzero(~bad))


def select_label(data: Dataset, label: str) -> Dataset:
    """Keep only rows whose label equals `label` (one-class training)."""
    if data.labels is None:
        raise DataError("selecting a normal class needs a label column (--label-column)")
    keep = np.flatnonzero(data.labels == str(label))
    if len(keep) == 0:
        raise DataError(f"no rows have label {label!r}; labels are {sorted(set(data.labels))}")
    return data.take(keep)


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Random split into (rest, fraction); the same seed gives the same split."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_second = max(1, round(len(data) * fraction))
    if len(data) - n_second < 1:
        raise DataError(f"{len(data)} rows are too few to split")
    return data.take(np.sort(order[n_second:])), data.take(np.sort(order[:n_second]))


def one_class_split(data: Dataset, normal_label: str, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The one-class protocol: normal rows split 50/50 into train and test, and every
    anomalous row in test. Returns (train, test); test.labels say which rows are normal."""
    if data.labels is None:
        raise DataError("the one-class split needs labels")
    normal = data.labels == str(normal_label)
    normal_idx = np.flatnonzero(normal)
    order = np.random.default_rng(seed).permutation(normal_idx)
    half = len(order) // 2
    train_idx = np.sort(order[:half])
    test_idx = np.sort(np.concatenate([order[half:], np.flatnonzero(~normal)]))
    return data.take(train_idx), data.take(test_idx)
