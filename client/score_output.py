"""The columns a score job writes: each row's id (the id column, else the input row number),
the scores, iw_nll, kl_dim_* and the top features when asked for, and the kept input columns;
and one ScoreResult turned into a table of them.

An explanation of K features adds, for each rank i = 1..K (most responsible first):
top_feature_i (the feature's name), top_nll_i (its reconstruction NLL, nats), top_excess_i
(nll minus the feature's validation mean, nats: the ranking key), top_value_i (the row's value)
and top_reconstruction_i (the model's reconstruction of it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from vaeserve.client.errors import VaeClientError
from vaeserve.client.readers import InputChunk, InputReader
from vaeserve.client.results import Explanation, ScoreResult
from vaeserve.common.explain import explain_count

SCORE_FIELDS = (
    pa.field("kl", pa.float32()),
    pa.field("recon_nll", pa.float32()),
    pa.field("neg_elbo", pa.float32()),
    pa.field("p_value", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
)
# The columns of rank i of an explanation: (prefix, Explanation attribute, type).
EXPLAIN_FIELDS = (
    ("top_feature", "names", pa.string()),
    ("top_nll", "nll", pa.float32()),
    ("top_excess", "excess", pa.float32()),
    ("top_value", "value", pa.float32()),
    ("top_reconstruction", "reconstruction", pa.float32()),
)


def explain_fields(k: int) -> list[pa.Field]:
    """The columns of an explanation of k features, rank by rank."""
    return [
        pa.field(f"{prefix}_{i}", type_)
        for i in range(1, k + 1)
        for prefix, _, type_ in EXPLAIN_FIELDS
    ]


def explain_columns(explanation: Explanation) -> dict[str, Any]:
    """An explanation's columns by name (feature indices as names when none are known)."""
    names = explanation.names
    if names is None:
        names = explanation.index.astype(str).astype(object)
    out: dict[str, Any] = {}
    for i in range(explanation.k):
        for prefix, attribute, _ in EXPLAIN_FIELDS:
            values = names if attribute == "names" else getattr(explanation, attribute)
            out[f"{prefix}_{i + 1}"] = values[:, i]
    return out


@dataclass
class ScoreOutput:
    """The output schema, the score columns it has, and which input column feeds each kept
    column (source, name)."""

    schema: pa.Schema
    id_column: str | None = None
    iw_nll: bool = False
    kl_per_dim: bool = False
    kept: tuple[tuple[str, str], ...] = ()
    explain: int = 0  # top features per row (0: none)

    @classmethod
    def for_input(
        cls,
        reader: InputReader,
        *,
        latent_dim: int,
        id_column: str | None = None,
        keep_columns: bool = False,
        iw_samples: int = 0,
        kl_per_dim: bool = False,
        explain: int = 0,
        input_dim: int = 0,
    ) -> ScoreOutput:
        """The layout for an input: the id first, then the scores, then kept columns (renamed
        input_NAME when NAME is taken). `explain` = K asks for the top K features of a model
        of `input_dim` features (all of them when K is larger)."""
        if id_column:
            fields = [pa.field(id_column, reader.column_types([id_column])[id_column])]
        else:
            fields = [pa.field("row", pa.int64())]
        fields += SCORE_FIELDS
        if iw_samples:
            fields.append(pa.field("iw_nll", pa.float32()))
        if kl_per_dim:
            fields += [pa.field(f"kl_dim_{d}", pa.float32()) for d in range(latent_dim)]
        k = explain_count(explain, input_dim) if explain else 0
        fields += explain_fields(k)
        kept: list[tuple[str, str]] = []
        if keep_columns:
            taken = {f.name for f in fields}
            types = reader.column_types(reader.columns)
            for c in reader.columns:
                if c == id_column:
                    continue
                name = c
                while name in taken:
                    name = f"input_{name}"
                taken.add(name)
                kept.append((c, name))
                fields.append(pa.field(name, types[c]))
        return cls(pa.schema(fields), id_column, bool(iw_samples), kl_per_dim, tuple(kept), k)

    def table(self, result: ScoreResult, chunk: InputChunk, sent: np.ndarray) -> pa.Table:
        """The output rows of the chunk rows at positions `sent`, which `result` scored."""
        numbers = chunk.row_numbers[sent]
        if not np.array_equal(result.row_ids, numbers):
            raise VaeClientError(
                f"rows {int(numbers[0])}..: the server's row ids do not match the rows sent",
                code=grpc.StatusCode.INTERNAL,
            )
        take = pa.array(sent)
        columns: dict[str, Any] = {}
        if self.id_column and chunk.aux is not None:
            columns[self.id_column] = chunk.aux.column(self.id_column).take(take)
        else:
            columns["row"] = pa.array(numbers, pa.int64())
        for f in SCORE_FIELDS:
            columns[f.name] = getattr(result, f.name)
        if self.iw_nll:
            columns["iw_nll"] = result.iw_nll
        if self.kl_per_dim and result.kl_per_dim is not None:
            for d in range(result.kl_per_dim.shape[1]):
                columns[f"kl_dim_{d}"] = result.kl_per_dim[:, d]
        if self.explain:
            if result.explain is None or result.explain.k != self.explain:
                got = 0 if result.explain is None else result.explain.k
                raise VaeClientError(
                    f"rows {int(numbers[0])}..: asked for {self.explain} top features per row, "
                    f"the answer has {got}",
                    code=grpc.StatusCode.INTERNAL,
                )
            columns.update(explain_columns(result.explain))
        if self.kept and chunk.aux is not None:
            for source, name in self.kept:
                columns[name] = chunk.aux.column(source).take(take)
        arrays = [
            columns[f.name]
            if isinstance(columns[f.name], pa.ChunkedArray | pa.Array)
            else pa.array(np.asarray(columns[f.name]), f.type)
            for f in self.schema
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)
