"""`score_dataset`: a `ray.data.Dataset` in, the same Dataset with score columns out, to chain
into a Ray pipeline (read, score, filter, write) with Ray doing the reading and writing.

Scoring runs in a pool of `TableScorer` actors through `map_batches` (Ray's batch-inference
pattern: the callable class opens the model or the server connection once per actor). Each
row keeps its columns and gains kl, recon_nll, neg_elbo, p_value, is_anomaly (kl_dim_* with
kl_per_dim, top_feature_1.. with explain) and reject_reason (null when scored; rows that
cannot be scored keep null scores). Ray Data does not keep row order across blocks unless
`DataContext.get_current().execution_options.preserve_order` is set: carry an id column.
For files in, files out with exactly-once commits and resume, use `run_dataset_job`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import ray
import ray.data

from vaeserve.client.backends import Backend, InProcessBackend
from vaeserve.client.columns import ColumnSelection
from vaeserve.client.dataset_job import DatasetJob, resolve_model
from vaeserve.client.jobs import check_explain
from vaeserve.client.options import ConnectionOptions
from vaeserve.client.table_scoring import TableScoring, score_table


class TableScorer:
    """One Ray actor of score_dataset: opens the backend once, then scores batches."""

    def __init__(
        self, backend: Backend, model: str, how: TableScoring, threads: int, device: str
    ) -> None:
        self.client = backend.open(threads, device)
        self.info = self.client.model_info(model)
        self.how = how
        self.checks = how.checks(self.info)

    def __call__(self, table: pa.Table) -> pa.Table:
        return score_table(self.client, self.info, table, self.how, self.checks)


def score_dataset(
    ds: ray.data.Dataset,
    *,
    model_dir: str | None = None,
    model_repo: str | None = None,
    model: str | None = None,
    server: str | ConnectionOptions | None = None,
    columns: Sequence[str] | None = None,
    condition_column: str | None = None,
    score: str | None = None,
    threshold: float | None = None,
    kl_per_dim: bool = False,
    explain: int = 0,
    batch_size: int = 1024,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> ray.data.Dataset:
    """`ds` with score columns appended (see the module docstring); lazy, like any Dataset.

    The model: `model_dir` (REPO/NAME/VERSION) or `model_repo` + `model` loaded in each actor
    with `cpus_per_worker` onnxruntime threads (and the CUDA provider with `gpus_per_worker`),
    or a vae-server (`server`: HOST:PORT, dns:///host:port, or ConnectionOptions). Feature
    columns: `columns`, else the model's feature names. `explain` = K adds each row's top K
    features (top_feature_1, top_nll_1, ...). `workers` actors score at once; an actor that
    dies is restarted and its batch retried (Ray Data's defaults).
    """
    if isinstance(server, str):
        server = ConnectionOptions(target=server, load_balancing="round_robin")
    job = DatasetJob(
        inputs=[],
        output="",
        model=model,
        model_dir=model_dir,
        model_repo=model_repo,
        score=score,
        threshold=threshold,
        workers=workers,
        engine="ray",
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        batch_size=batch_size,
    )
    job.check()
    backend = job.backend(server).portable()
    info = resolve_model(backend, model)
    names = list(ds.schema().names)
    selection = ColumnSelection(
        columns=columns,
        condition_column=condition_column,
        feature_names=info.feature_names,
        expected_dim=info.input_dim,
    )
    features, _ = selection.resolve(names, "the dataset")
    check_explain(info, explain)
    how = TableScoring(features, condition_column, score, threshold, kl_per_dim, explain)
    how.checks(info)  # a wrong condition option fails here, not in every actor
    in_process = isinstance(backend, InProcessBackend)
    return ds.map_batches(
        TableScorer,
        fn_constructor_kwargs={
            "backend": backend,
            "model": f"{info.name}:{info.version}",
            "how": how,
            "threads": max(1, int(cpus_per_worker)) if in_process else 0,
            "device": "cuda" if in_process and gpus_per_worker > 0 else "cpu",
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )
