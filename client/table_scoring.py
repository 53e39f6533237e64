"""Score an Arrow table's rows and return the table with the score columns appended: the step
that Ray Data's `map_batches` (client/ray_dataset.py) and Spark's `mapInPandas`
(client/pandas_scoring.py) repeat over batches of a dataset.

Every row stays, in its place: a row that cannot be scored (a missing or non-finite feature,
an unknown condition label) gets null scores and a `reject_reason`, so the output can be
joined back or filtered. Rows are checked (RowChecks) and scored (`client.score`) exactly as
`vae-client score` does, so the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from vaeserve.client.conditions import condition_encoder
from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo
from vaeserve.client.readers import InputChunk
from vaeserve.client.row_checks import RowChecks
from vaeserve.client.score_output import explain_columns, explain_fields
from vaeserve.common.explain import explain_count

REJECT_REASON = "reject_reason"


@dataclass(frozen=True)
class TableScoring:
    """How tables are scored: the feature columns (in model order), the condition column of
    a conditional model, and the flag, per-dimension KL and explanation options."""

    features: Sequence[str]
    condition_column: str | None = None
    score: str | None = None
    threshold: float | None = None
    kl_per_dim: bool = False
    explain: int = 0  # top features per row (score_output.py names their columns)

    def score_fields(self, latent_dim: int, input_dim: int = 0) -> list[pa.Field]:
        """The columns appended to each table, in order (input_dim: the model's features,
        for an explanation's width)."""
        fields = [
            pa.field("kl", pa.float32()),
            pa.field("recon_nll", pa.float32()),
            pa.field("neg_elbo", pa.float32()),
            pa.field("p_value", pa.float64()),
            pa.field("is_anomaly", pa.bool_()),
        ]
        if self.kl_per_dim:
            fields += [pa.field(f"kl_dim_{d}", pa.float32()) for d in range(latent_dim)]
        if self.explain:
            fields += explain_fields(explain_count(self.explain, input_dim))
        return [*fields, pa.field(REJECT_REASON, pa.string())]

    def checks(self, info: ModelInfo) -> RowChecks:
        """The RowChecks for the model (condition labels checked for conditional models)."""
        return RowChecks(
            list(self.features),
            None,
            self.condition_column,
            condition_encoder(info, self.condition_column),
        )


def score_table(
    client: Any, info: ModelInfo, table: pa.Table, how: TableScoring, checks: RowChecks
) -> pa.Table:
    """`table` with the score columns of `how.score_fields` appended (see the module
    docstring). `client` is a VaeClient or LocalModelClient; a column that clashes with a
    score column's name is replaced."""
    rows = features_matrix(table, how.features)
    aux = table.select([how.condition_column]) if how.condition_column else None
    checked = checks.check(InputChunk(0, rows, aux))
    n = table.num_rows
    values: dict[str, np.ndarray] = {}
    reasons: list[str | None] = [None] * n
    for row, _, reason in checked.rejects:
        reasons[row] = reason
    sent = checked.sent
    if len(sent):
        (result,) = client.score(
            [checked.batch()],
            model=(info.name, info.version),
            score=how.score,
            threshold=how.threshold,
            include_kl_per_dim=how.kl_per_dim,
            explain=how.explain,
            raise_errors=False,
        )
        if result.error is not None:
            if result.error.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise result.error
            for i in sent:
                reasons[i] = f"the server rejected the batch: {result.error.details}"
            sent = sent[:0]
        else:
            values = {
                "kl": result.kl,
                "recon_nll": result.recon_nll,
                "neg_elbo": result.neg_elbo,
                "p_value": result.p_value,
                "is_anomaly": result.is_anomaly,
            }
            if how.kl_per_dim and result.kl_per_dim is not None:
                for d in range(result.kl_per_dim.shape[1]):
                    values[f"kl_dim_{d}"] = result.kl_per_dim[:, d]
            if how.explain and result.explain is not None:
                values.update(explain_columns(result.explain))
    for f in how.score_fields(info.latent_dim, info.input_dim):
        if f.name == REJECT_REASON:
            column = pa.array(reasons, pa.string())
        else:
            column = _spread(values.get(f.name), sent, n, f.type)
        if f.name in table.column_names:
            table = table.drop_columns([f.name])
        table = table.append_column(f, column)
    return table


def features_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """The feature columns as a C-ordered float32 matrix, NaN for nulls."""
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise VaeClientError(f"the data has no columns {missing}; it has {table.column_names}")
    out = np.empty((len(features), table.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        column = table.column(name).cast(pa.float32(), safe=False)
        out[j] = column.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(out.T)


def _spread(values: np.ndarray | None, at: np.ndarray, n: int, kind: pa.DataType) -> pa.Array:
    """An n-long column holding `values` at positions `at` and null elsewhere."""
    full = np.zeros(n, dtype=object if kind == pa.string() else kind.to_pandas_dtype())
    valid = np.zeros(n, dtype=bool)
    if values is not None and len(at):
        full[at] = values
        valid[at] = True
    return pa.array(full, kind, mask=~valid)
