"""Score pandas DataFrames with an exported model in this process: the function behind the
Spark recipe (`df.mapInPandas(...)`, docs/batch.md), usable on any iterator of frames.

Each frame comes back with its columns and the score columns of client/table_scoring.py
(kl, recon_nll, neg_elbo, p_value, is_anomaly, [kl_dim_*], [top_feature_1..], reject_reason).
The model is opened once per process and model folder, so a Spark Python worker that is reused
across tasks loads it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from vaeserve.client.columns import ColumnSelection
from vaeserve.client.local_model import LocalModelClient
from vaeserve.client.table_scoring import TableScoring, score_table

_MODELS: dict[tuple[str, int], LocalModelClient] = {}


def score_pandas(
    frames: Iterable[Any],
    *,
    model_dir: str,
    columns: Sequence[str] | None = None,
    condition_column: str | None = None,
    score: str | None = None,
    threshold: float | None = None,
    kl_per_dim: bool = False,
    explain: int = 0,
    threads: int = 1,
) -> Iterator[Any]:
    """Each DataFrame of `frames` with score columns appended (see the module docstring).
    Feature columns: `columns`, else the model's feature names."""
    key = (str(model_dir), threads)
    if key not in _MODELS:
        _MODELS[key] = LocalModelClient(model_dir, threads=threads)
    client = _MODELS[key]
    info = client.info
    how = checks = None
    for frame in frames:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if how is None:
            selection = ColumnSelection(
                columns=columns,
                condition_column=condition_column,
                feature_names=info.feature_names,
                expected_dim=info.input_dim,
            )
            features, _ = selection.resolve(table.column_names, "the frame")
            how = TableScoring(features, condition_column, score, threshold, kl_per_dim, explain)
            checks = how.checks(info)
        yield score_table(client, info, table, how, checks).to_pandas()
