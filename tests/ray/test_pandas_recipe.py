"""The Spark recipe's body (docs/batch.md): `score_pandas` turns DataFrames into the same
DataFrames with the server's scores, rows that cannot be scored kept with the reason. Spark
itself is not started (pyspark does not fit the suite's time); this is the function that
`mapInPandas` calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from vaeserve.client.pandas_scoring import score_pandas

SCORE_COLUMNS = ["kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly"]


def test_score_pandas_appends_the_servers_scores(
    dataset: Path, model_dir: Path, reference: dict[str, pa.Table]
) -> None:
    import pandas as pd

    source = dataset / "b.parquet"  # row id00612 has a missing value
    frame = pd.read_parquet(source)
    frames = iter([frame.iloc[:123], frame.iloc[123:]])  # as Spark hands over a partition
    out = pd.concat(list(score_pandas(frames, model_dir=str(model_dir), kl_per_dim=True)))
    per_dim = [f"kl_dim_{d}" for d in range(8)]
    assert list(out.columns) == [*frame.columns, *SCORE_COLUMNS, *per_dim, "reject_reason"]
    assert out["id"].tolist() == frame["id"].tolist()
    rejected = out[out["reject_reason"].notna()]
    assert rejected["id"].tolist() == ["id00612"]
    assert "missing or NaN value in column 'pixel_0_3'" in rejected["reject_reason"].iloc[0]
    assert rejected["kl"].isna().all()
    kept = out[out["reject_reason"].isna()]
    expected = reference[str(source)]
    assert kept["id"].tolist() == expected.column("id").to_pylist()
    for name in SCORE_COLUMNS:
        want = expected.column(name).to_numpy()
        got = kept[name].to_numpy().astype(want.dtype)
        assert np.array_equal(got, want), name
    assert np.allclose(kept[per_dim].sum(axis=1), kept["kl"], rtol=1e-5)
