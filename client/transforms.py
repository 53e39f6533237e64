"""Row-by-row file commands over VaeClient: encode / decode / reconstruct a file, generate
samples into a file, and decode the latent path between two input rows (interpolate)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vaeserve.client.columns import ColumnSelection
from vaeserve.client.conditions import condition_rows
from vaeserve.client.errors import VaeClientError
from vaeserve.client.library import VaeClient
from vaeserve.client.models import ModelInfo, ModelLike
from vaeserve.client.readers import InputReader, open_input
from vaeserve.client.writers import detect_output_format, float_columns, write_tables

TRANSFORMS = ("encode", "decode", "reconstruct")


def transform_file(
    client: VaeClient,
    kind: str,
    input: str,
    output: str,
    *,
    model: str | None = None,
    input_format: str | None = None,
    output_format: str | None = None,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    condition: str | None = None,
    batch_size: int = 4096,
    sample: bool = False,
    seed: int = 0,
    overwrite: bool = True,
) -> int:
    """encode / decode / reconstruct every row of a file, streaming; returns the row count."""
    if kind not in TRANSFORMS:
        raise VaeClientError(f"unknown transform {kind!r}")
    if batch_size < 1:
        raise VaeClientError(f"--batch-size must be >= 1, got {batch_size}")
    fmt = detect_output_format(output, output_format)
    if output != "-" and os.path.exists(output) and not overwrite:
        raise VaeClientError(f"{output} exists; pass --overwrite to replace it")
    info = client.model_info(model, cached=True)
    selection = ColumnSelection(
        columns=columns,
        id_column=id_column,
        feature_names=latent_names(info) if kind == "decode" else info.feature_names,
        expected_dim=info.latent_dim if kind == "decode" else info.input_dim,
    )
    reader = open_input(input, selection, fmt=input_format)
    cond = condition_rows(info, condition)
    if kind == "encode":
        value_names = latent_names(info, "mu") + latent_names(info, "logvar")
        if sample:
            value_names += latent_names(info)
    else:
        value_names = feature_names(info)
    lead: list[pa.Field] = []
    if fmt != "npy":
        if id_column:
            lead = [pa.field(id_column, reader.column_types([id_column])[id_column])]
        else:
            lead = [pa.field("row", pa.int64())]
    schema = pa.schema(lead + [pa.field(n, pa.float32()) for n in value_names])

    def tables() -> Iterator[pa.Table]:
        for k, chunk in enumerate(reader.chunks(batch_size)):
            if not len(chunk):
                continue
            bad = ~np.isfinite(chunk.rows).all(axis=1)
            if bad.any():
                first = int(chunk.row_numbers[np.flatnonzero(bad)[0]])
                raise VaeClientError(f"{input}: row {first} has a missing or non-finite value")
            c = None if cond is None else np.broadcast_to(cond, (len(chunk), cond.shape[1]))
            if kind == "encode":
                enc = client.encode(
                    chunk.rows, model=model, condition=c, sample=sample, seed=seed + k
                )
                values = [enc.mu, enc.logvar] + ([enc.z] if sample else [])
                matrix = np.concatenate(values, axis=1)
            elif kind == "decode":
                matrix = client.decode(chunk.rows, model=model, condition=c)
            else:
                matrix = client.reconstruct(chunk.rows, model=model, condition=c)
            arrays: list[Any] = []
            if lead:
                if id_column and chunk.aux is not None:
                    arrays.append(chunk.aux.column(id_column))
                else:
                    arrays.append(pa.array(chunk.row_numbers, pa.int64()))
            yield pa.Table.from_arrays(arrays + float_columns(matrix), schema=schema)

    try:
        return write_tables(output, fmt, schema, tables())
    finally:
        reader.close()


def sample_to_file(
    client: VaeClient,
    output: str,
    n: int,
    *,
    model: ModelLike = None,
    seed: int = 0,
    condition: Any = None,
    with_z: bool = False,
    output_format: str | None = None,
) -> int:
    """Generate n rows (and their z with `with_z`) and write them as each request answers, so
    memory holds one request's rows whatever n is; returns the rows written."""
    info = client.model_info(model, cached=True)
    names = feature_names(info) + (latent_names(info) if with_z else [])
    schema = pa.schema([pa.field(c, pa.float32()) for c in names])
    parts = client.iter_sample(n, model=model, seed=seed, condition=condition)
    tables = (
        pa.Table.from_arrays(
            float_columns(np.concatenate([p.rows, p.z], axis=1) if with_z else p.rows),
            schema=schema,
        )
        for p in parts
    )
    return write_tables(output, detect_output_format(output, output_format), schema, tables)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Straight-line interpolation between two vectors."""
    t = t[:, None].astype(np.float64)
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between two vectors (linear when they are parallel)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    cos = float(np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if abs(np.sin(omega)) < 1e-6:
        return lerp(a, b, t)
    t = t[:, None]
    out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return out.astype(np.float32)


#: Interpolation methods by name: straight line or great circle.
PATHS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "linear": lerp,
    "spherical": slerp,
}


def interpolate_file(
    client: VaeClient,
    input: str,
    output: str,
    *,
    ends: tuple[int, int] = (0, 1),
    steps: int = 8,
    method: str = "linear",
    with_z: bool = False,
    model: ModelLike = None,
    input_format: str | None = None,
    output_format: str | None = None,
    columns: Sequence[str] | None = None,
    condition: str | None = None,
) -> int:
    """Decode `steps` points on the latent path between the posterior means of input rows
    `ends` and write them (t, the features, and z_* with `with_z`); returns the rows written."""
    if method not in PATHS:
        raise VaeClientError(f"method must be one of {', '.join(PATHS)}, got {method!r}")
    info = client.model_info(model, cached=True)
    cond = condition_rows(info, condition)
    selection = ColumnSelection(
        columns=columns, feature_names=info.feature_names, expected_dim=info.input_dim
    )
    with open_input(input, selection, fmt=input_format) as reader:
        rows = pick_rows(reader, list(ends), input)
    enc = client.encode(rows, model=model, condition=cond)
    t = np.linspace(0.0, 1.0, steps)
    path = PATHS[method](enc.mu[0], enc.mu[1], t)
    matrix = client.decode(path, model=model, condition=cond)
    names = feature_names(info)
    if with_z:
        names += latent_names(info)
        matrix = np.concatenate([matrix, path], axis=1)
    return write_rows(output, matrix, names, output_format=output_format, lead={"t": t})


def pick_rows(reader: InputReader, wanted: list[int], where: str) -> np.ndarray:
    """The given input rows, read in chunks and stopping once all are found."""
    found: dict[int, np.ndarray] = {}
    for chunk in reader.chunks(4096):
        for w in wanted:
            if chunk.start <= w < chunk.start + len(chunk):
                found[w] = chunk.rows[w - chunk.start]
        if len(found) == len(set(wanted)):
            break
    missing = [w for w in wanted if w not in found]
    if missing:
        raise VaeClientError(f"{where}: rows {missing} are past the end of the input")
    rows = np.stack([found[w] for w in wanted])
    if not np.isfinite(rows).all():
        raise VaeClientError(f"{where}: rows {wanted} have missing or non-finite values")
    return rows


def write_rows(
    output: str,
    matrix: np.ndarray,
    names: Sequence[str],
    *,
    output_format: str | None = None,
    lead: dict[str, np.ndarray] | None = None,
) -> int:
    """Write a small in-memory matrix (with optional leading columns) in any output format;
    returns the rows written."""
    fmt = detect_output_format(output, output_format)
    columns: dict[str, pa.Array] = {}
    if lead and fmt != "npy":
        columns.update({k: pa.array(v) for k, v in lead.items()})
    columns.update(zip(names, float_columns(matrix), strict=True))
    table = pa.table(columns)
    return write_tables(output, fmt, table.schema, [table])


def feature_names(info: ModelInfo) -> list[str]:
    """The model's feature names, or x0, x1, ... when it has none."""
    return list(info.feature_names or [f"x{i}" for i in range(info.input_dim)])


def latent_names(info: ModelInfo, prefix: str = "z") -> list[str]:
    """prefix_0 .. prefix_{latent_dim - 1}."""
    return [f"{prefix}_{d}" for d in range(info.latent_dim)]
