"""Input files in every format and a reader for every output format, for the client tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from vaeserve.client.cli import cli

SCORE_TYPES = {
    "kl": pa.float32(),
    "recon_nll": pa.float32(),
    "neg_elbo": pa.float32(),
    "p_value": pa.float64(),
    "is_anomaly": pa.bool_(),
    "iw_nll": pa.float32(),
}


def write_inputs(
    folder: Path, x: np.ndarray, names: list[str], labels: np.ndarray
) -> dict[str, Path]:
    """The same rows as CSV (with id and label columns), Parquet (likewise) and NPY."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"id{i:05d}" for i in range(len(x))])
    table = pa.table(
        {"id": ids, **{n: x[:, j] for j, n in enumerate(names)}, "label": labels.astype(str)}
    )
    paths = {"csv": folder / "in.csv", "parquet": folder / "in.parquet", "npy": folder / "in.npy"}
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"], row_group_size=500)
    np.save(paths["npy"], x)
    return paths


def read_output(path: Path, fmt: str | None = None) -> pa.Table:
    """A score (or any) output file back as an Arrow table with the score columns typed."""
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "parquet":
        table = pq.read_table(path)
    elif fmt == "csv":
        header = path.open().readline().strip().replace('"', "").split(",")
        types = {k: v for k, v in SCORE_TYPES.items() if k in header}
        types.update({h: pa.float32() for h in header if h.startswith("kl_dim_")})
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        columns = list(rows[0]) if rows else []
        table = pa.table({c: [r[c] for r in rows] for c in columns})
    else:
        raise ValueError(fmt)
    casts = {k: v for k, v in SCORE_TYPES.items() if k in table.column_names}
    casts.update({c: pa.float32() for c in table.column_names if c.startswith("kl_dim_")})
    for name, t in casts.items():
        i = table.column_names.index(name)
        table = table.set_column(i, name, table.column(name).cast(t))
    return table


def read_rejects(path: Path) -> list[dict[str, str]]:
    """The rejects CSV as dicts (row, id, reason)."""
    import csv

    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def invoke(args: list[str], target: str | None = None, **kw: object) -> Result:
    """Run vae-client in-process with VAECLIENT_SERVER pointing at the test server."""
    env = {"VAECLIENT_SERVER": target} if target else {}
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    return CliRunner().invoke(cli, args, env=env, auto_envvar_prefix="VAECLIENT", **kw)
