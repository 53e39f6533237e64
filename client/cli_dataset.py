"""`vae-client score` over datasets and without a server: the options that choose the engine
(local or Ray) and the model (a server, or an exported model folder loaded in-process), and the
command's dataset path. cli.py stays the thin layer over ScoreJob / DatasetJob."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
import grpc

from vaeserve.client.dataset_files import is_dataset_spec
from vaeserve.client.dataset_job import ENGINES, DatasetJob, run_dataset_job
from vaeserve.client.dataset_summary import DatasetIncomplete
from vaeserve.client.errors import VaeClientError
from vaeserve.client.job_summary import JobSummary, print_summary
from vaeserve.client.options import ConnectionOptions
from vaeserve.common.manifest import ManifestError

_OPTIONS = (
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="local",
        show_default=True,
        help="local: this process; ray: a pool of Ray actors (a Ray cluster, or a local one).",
    ),
    click.option(
        "--ray-address",
        help="Ray cluster to join (HOST:PORT of the head, ray://..., auto), or local for a new "
        "one. Default: RAY_ADDRESS, else one `ray start` started here, else a new local Ray.",
    ),
    click.option(
        "--model-dir",
        help="Score in-process with this exported model (REPO/NAME/VERSION) instead of a server.",
    ),
    click.option(
        "--model-repo",
        help="Score in-process with --model (NAME[:VERSION], default newest) from this repository.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Ray actors scoring in parallel. Default: the cluster's CPUs / --cpus-per-worker.",
    ),
    click.option(
        "--cpus-per-worker",
        type=click.FloatRange(min=0, min_open=True),
        help="CPUs per worker; in-process, also its onnxruntime threads. Default: 1 per Ray "
        "actor, every core locally.",
    ),
    click.option(
        "--gpus-per-worker",
        type=click.FloatRange(min=0),
        default=0.0,
        help="GPUs per Ray actor for in-process scoring on the CUDA provider.",
    ),
    click.option(
        "--rows-per-part",
        type=click.IntRange(min=1),
        help="Cut Parquet files into parts of whole row groups (at least this many rows), each "
        "its own output file, so one large file is scored in parallel.",
    ),
    click.option(
        "--max-retries",
        type=click.IntRange(min=0),
        default=3,
        show_default=True,
        help="Ray: attempts at a part after the worker scoring it died.",
    ),
)
DATASET_ONLY = ("engine", "ray_address", "workers", "gpus_per_worker", "rows_per_part")


def dataset_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the engine and in-process model options to a command."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def wants_dataset(inputs: Sequence[str], engine: str) -> bool:
    """True when the inputs are a dataset (several, a folder, a glob, @LIST) or the engine is
    Ray; a single file on the local engine is the single-file job."""
    return engine != "local" or is_dataset_spec(inputs)


def pop_single_file_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the engine options out of a single-file job's arguments: the in-process model
    settings (model_dir, model_repo, cpus_per_worker); VaeClientError for options that only
    datasets take."""
    values = {name: kwargs.pop(name) for name in (*DATASET_ONLY, "max_retries")}
    given = [
        f"--{name.replace('_', '-')}"
        for name in DATASET_ONLY
        if name != "engine" and values[name] not in (None, 0.0)
    ]
    if given:
        raise VaeClientError(
            f"{', '.join(given)} apply to datasets (a folder, a glob, several files) or "
            "--engine ray"
        )
    return {name: kwargs.pop(name) for name in ("model_dir", "model_repo", "cpus_per_worker")}


def open_local_model(
    model_dir: str | None, model_repo: str | None, model: str | None, threads: int
) -> Any:
    """A LocalModelClient on --model-dir, or on --model from --model-repo."""
    from vaeserve.client.local_model import LocalModelClient
    from vaeserve.common.model_scorer import resolve_model_dir

    if model_dir and model_repo:
        raise VaeClientError("pass --model-dir or --model-repo, not both")
    try:
        folder = model_dir or resolve_model_dir(model_repo or "", model)
    except ManifestError as exc:
        raise VaeClientError(str(exc), code=grpc.StatusCode.NOT_FOUND) from None
    return LocalModelClient(folder, threads=threads)


def run_dataset_command(
    inputs: Sequence[str],
    kwargs: dict[str, Any],
    connection: ConnectionOptions,
    *,
    quiet: bool,
    summary_json: str | None,
) -> None:
    """Run `score` on a dataset: the job, then the summary (also when some parts failed)."""
    if kwargs.pop("seed"):
        raise VaeClientError("--seed is for --iw-samples, which datasets do not take")
    job = DatasetJob(inputs=list(inputs), progress=False if quiet else None, **kwargs)
    try:
        summary = run_dataset_job(job, connection)
    except DatasetIncomplete as exc:
        if exc.summary is not None:
            _report(exc.summary, quiet, summary_json)
        raise
    _report(summary, quiet, summary_json)


def _report(summary: JobSummary, quiet: bool, summary_json: str | None) -> None:
    if summary_json:
        with open(summary_json, "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
    if not quiet:
        print_summary(summary)
