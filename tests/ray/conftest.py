"""Dataset-job fixtures: a multi-file dataset of real rows (scikit-learn's digits, split over
Parquet and CSV files with an id column and a few NaN rows), each file's scores from the
single-file `vae-client score` job against the shared server (the reference every engine must
equal), the exported model folder, and one two-node Ray cluster for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.ray.cluster import RayCluster, start_two_node_cluster
from vaeserve.client import VaeClient
from vaeserve.client.jobs import ScoreJob, run_score_job
from vaeserve.server import VaeServer

NAMES = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
NAN_ROWS = (7, 612, 1205)  # rows (of all 1797) with a missing value: they must be rejected
# (file name, first row, last row + 1): Parquet and CSV, one in a sub-folder
FILES = (
    ("a.parquet", 0, 500),
    ("b.parquet", 500, 1000),
    ("sub/c.csv", 1000, 1300),
    ("d.parquet", 1300, 1797),
)


@pytest.fixture(scope="session")
def digit_rows() -> np.ndarray:
    """All 1797 digits as float32 [1797, 64], with NaN in the NAN_ROWS."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    x[list(NAN_ROWS), 3] = np.nan
    return x


def write_rows(path: Path, x: np.ndarray, first_id: int, row_group: int = 100) -> None:
    """Rows with an `id` column (id00000, ...) as Parquet or CSV, by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"id{first_id + i:05d}" for i in range(len(x))]
    table = pa.table({"id": ids, **{n: x[:, j] for j, n in enumerate(NAMES)}})
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=row_group)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory, digit_rows: np.ndarray) -> Path:
    """A folder of the FILES (and two files a dataset listing must skip)."""
    folder = tmp_path_factory.mktemp("dataset")
    for name, start, stop in FILES:
        write_rows(folder / name, digit_rows[start:stop], start)
    (folder / "_SUCCESS").write_text("")
    (folder / "README.txt").write_text("not data")
    return folder


@pytest.fixture(scope="session")
def target(digits_server: VaeServer) -> str:
    """HOST:PORT of the shared digits server."""
    return f"127.0.0.1:{digits_server.port}"


@pytest.fixture(scope="session")
def model_dir(model_repo: Path) -> Path:
    """The exported digits model the shared server serves (REPO/digits/1)."""
    return model_repo / "digits" / "1"


@pytest.fixture(scope="session")
def reference(
    tmp_path_factory: pytest.TempPathFactory, dataset: Path, target: str
) -> dict[str, pa.Table]:
    """Each dataset file scored by the single-file job against the server, by file path."""
    out = tmp_path_factory.mktemp("reference")
    tables = {}
    with VaeClient(target) as client:
        for i, (name, _, _) in enumerate(FILES):
            result = out / f"{i}.parquet"
            job = ScoreJob(
                input=str(dataset / name), output=str(result), id_column="id", progress=False
            )
            run_score_job(client, job)
            tables[str(dataset / name)] = pq.read_table(result)
    return tables


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (1 CPU each; the second has resource `node2`), stopped at the
    end of the session whatever happened. This process (and the drivers it starts) gets the
    cluster's token in its environment for as long."""
    cluster = start_two_node_cluster()
    saved = {k: os.environ.get(k) for k in cluster.auth_env}
    os.environ.update(cluster.auth_env)
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_address(ray_cluster: RayCluster) -> str:
    """The cluster's address, with this test process connected to it as a Ray driver (the
    dataset jobs the tests run in-process reuse that connection)."""
    import ray
    import ray.data

    ray.init(address=ray_cluster.address, log_to_driver=False, logging_level="WARNING")
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray_cluster.address
