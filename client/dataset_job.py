"""The dataset `score` job: many CSV / Parquet files in, one scored output file per part in an
output folder, on this process (engine "local") or a Ray cluster (engine "ray").

The driver lists the inputs, plans the parts (client/dataset_parts.py), resolves the model once
(so every worker scores with the same version), prepares the output folder and hands the parts
not yet committed to the engine. Workers score and commit parts (client/part_run.py); the
driver gathers their results and, when every part is committed, writes the manifest, the
rejects file and _SUCCESS (client/dataset_output.py). A rerun with `resume` skips what is
committed, so an interrupted job ends with every input row exactly once in the output.
The local engine never imports Ray.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from vaeserve.client.backends import Backend, InProcessBackend, ServerBackend, model_fingerprint
from vaeserve.client.conditions import condition_encoder
from vaeserve.client.dataset_files import list_dataset
from vaeserve.client.dataset_output import JOB_FORMAT, DatasetOutput, PartResult
from vaeserve.client.dataset_parts import Part, plan_parts
from vaeserve.client.dataset_summary import DatasetIncomplete, DatasetSummary
from vaeserve.client.errors import VaeClientError
from vaeserve.client.interrupts import raise_if_interrupted
from vaeserve.client.job_summary import JobInterrupted
from vaeserve.client.jobs import check_explain
from vaeserve.client.models import ModelInfo
from vaeserve.client.options import ConnectionOptions
from vaeserve.client.part_run import PartSettings, peak_rss_mb, score_part
from vaeserve.client.writers import detect_output_format
from vaeserve.common.manifest import ManifestError, load_manifest
from vaeserve.common.scores import SCORE_NAMES

ENGINES = ("local", "ray")
DATASET_OUTPUT_FORMATS = ("parquet", "csv", "jsonl")


@dataclass
class DatasetJob:
    """A dataset score job: inputs, output folder, the model and where it runs.

    The model runs on `vae-server` (the connection passed to run_dataset_job) unless
    `model_dir` (REPO/NAME/VERSION) or `model_repo` (with `model` NAME[:VERSION]) names an
    exported model to load in each worker.
    """

    inputs: Sequence[str]
    output: str
    engine: str = "local"
    model: str | None = None
    model_dir: str | None = None
    model_repo: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    columns: Sequence[str] | None = None
    id_column: str | None = None
    condition_column: str | None = None
    batch_size: int = 1024
    max_in_flight: int = 4
    score: str | None = None
    threshold: float | None = None
    iw_samples: int = 0
    kl_per_dim: bool = False
    explain: int = 0  # top features per row (0: none)
    keep_columns: bool = False
    rejects: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: only when stderr is a terminal
    rows_per_part: int | None = None  # cut Parquet files into parts of this many rows or more
    ray_address: str | None = None  # None: RAY_ADDRESS, a `ray start` cluster here, or new
    workers: int | None = None  # Ray actors; None: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float | None = None  # None: 1 per Ray actor, every core locally
    gpus_per_worker: float = 0.0
    max_retries: int = 3  # Ray: attempts at a part after its worker died

    def check(self) -> None:
        """VaeClientError for settings no run can use."""
        problems = []
        if "-" in self.inputs:
            problems.append("a dataset is read from files, not stdin ('-')")
        if self.engine not in ENGINES:
            problems.append(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.batch_size < 1 or self.max_in_flight < 1:
            problems.append("--batch-size and --in-flight must be >= 1")
        if self.score is not None and self.score not in SCORE_NAMES:
            problems.append(f"--score must be one of {sorted(SCORE_NAMES)}, got {self.score!r}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            problems.append(f"--threshold must be a finite number of nats, got {self.threshold}")
        if self.iw_samples:
            problems.append(
                "--iw-samples is not available for datasets: iw_nll draws noise per request, so "
                "it would depend on how rows are batched"
            )
        if self.explain < 0:
            problems.append(f"--explain must be >= 0, got {self.explain}")
        if self.model_dir and self.model_repo:
            problems.append("pass --model-dir or --model-repo, not both")
        if self.rows_per_part is not None and self.rows_per_part < 1:
            problems.append("--rows-per-part must be >= 1")
        if self.workers is not None and self.workers < 1:
            problems.append("--workers must be >= 1")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            problems.append("--cpus-per-worker must be > 0")
        if self.gpus_per_worker < 0 or self.max_retries < 0:
            problems.append("--gpus-per-worker and --max-retries must be >= 0")
        if self.gpus_per_worker and not (self.model_dir or self.model_repo):
            problems.append("--gpus-per-worker is for in-process scoring (--model-dir)")
        if self.engine == "local" and (self.ray_address or self.workers or self.gpus_per_worker):
            problems.append("--ray-address, --workers and --gpus-per-worker need --engine ray")
        if problems:
            raise VaeClientError("; ".join(problems))

    def backend(self, connection: ConnectionOptions | None) -> Backend:
        """The backend the job's options choose: in-process with a model folder, else the
        server of `connection`."""
        if self.model_dir or self.model_repo:
            from vaeserve.common.model_scorer import resolve_model_dir

            try:
                folder = self.model_dir or resolve_model_dir(self.model_repo or "", self.model)
            except ManifestError as exc:
                raise VaeClientError(str(exc), code=grpc.StatusCode.NOT_FOUND) from None
            return InProcessBackend(os.path.abspath(folder))
        return ServerBackend(connection or ConnectionOptions())

    def output_format_for(self) -> str:
        """--format, else the folder name's extension when it has one, else Parquet."""
        if self.output_format:
            return detect_output_format(self.output, self.output_format, DATASET_OUTPUT_FORMATS)
        try:
            name = self.output.rstrip("/")
            return detect_output_format(name, None, DATASET_OUTPUT_FORMATS)
        except VaeClientError:
            return "parquet"

    def settings(self, fmt: str, info: ModelInfo) -> PartSettings:
        """What workers need to score a part."""
        return PartSettings(
            model=f"{info.name}:{info.version}",
            output=self.output,
            output_format=fmt,
            columns=list(self.columns) if self.columns else None,
            id_column=self.id_column,
            condition_column=self.condition_column,
            keep_columns=self.keep_columns,
            batch_size=self.batch_size,
            max_in_flight=self.max_in_flight,
            score=self.score,
            threshold=self.threshold,
            kl_per_dim=self.kl_per_dim,
            explain=self.explain,
        )

    def fingerprint(self, fmt: str, info: ModelInfo) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption (the inputs
        may: parts already committed must be unchanged, the others are scored as they are)."""
        return {
            "job_format": JOB_FORMAT,
            "rows_per_part": self.rows_per_part,
            "columns": list(self.columns) if self.columns else None,
            "id_column": self.id_column,
            "condition_column": self.condition_column,
            "keep_columns": self.keep_columns,
            "output_format": fmt,
            "model": model_fingerprint(info),
            "score": self.score,
            "threshold": self.threshold,
            "kl_per_dim": self.kl_per_dim,
            # only when asked for, so folders of jobs from before explanations still match
            **({"explain": self.explain} if self.explain else {}),
        }


def resolve_model(backend: Backend, model: str | None) -> ModelInfo:
    """The model every worker will score with (a server's newest version, pinned now)."""
    if isinstance(backend, InProcessBackend):
        from vaeserve.client.local_model import model_info_from_manifest

        try:
            info = model_info_from_manifest(load_manifest(backend.model_dir))
        except ManifestError as exc:
            raise VaeClientError(str(exc), code=grpc.StatusCode.NOT_FOUND) from None
        name, _, version = (model or "").partition(":")
        if model and (name != info.name or (version and int(version) != info.version)):
            raise VaeClientError(
                f"{backend.model_dir} holds model {info.name}:{info.version}, not {model}",
                code=grpc.StatusCode.NOT_FOUND,
            )
        return info
    with backend.open() as client:
        return client.model_info(model)


def run_dataset_job(job: DatasetJob, connection: ConnectionOptions | None = None) -> DatasetSummary:
    """Score a dataset into an output folder, resumably; see the module docstring.

    Raises DatasetIncomplete (with the summary) when some parts' inputs could not be scored,
    JobInterrupted on Ctrl-C, VaeClientError for anything that stops the job; committed parts
    are kept in every case. Nothing is written before the model, the inputs and the engine
    (the Ray cluster) are known to be there.
    """
    started = time.monotonic()
    job.check()
    fmt = job.output_format_for()
    backend = job.backend(connection)
    info = resolve_model(backend, job.model)
    condition_encoder(info, job.condition_column)  # a wrong condition option fails here
    check_explain(info, job.explain)
    files = list_dataset(job.inputs, input_format=job.input_format, exclude=job.output)
    parts = plan_parts(files, job.rows_per_part)
    engine = open_engine(job)
    try:
        output = DatasetOutput(job.output, fmt)
        committed = output.prepare(
            job.fingerprint(fmt, info), parts, resume=job.resume, overwrite=job.overwrite
        )
        summary = DatasetSummary(
            input=" ".join(job.inputs),
            output=job.output,
            model=f"{info.name}:{info.version}",
            engine=job.engine,
            backend=backend.describe(),
            files=len(files),
            parts=len(parts),
        )
        for result in committed.values():
            result.skipped = True
            summary.add(result)
        todo = [p for p in parts if p.name not in committed]
        results = list(committed.values())
        try:
            for result in engine.run(todo, job.settings(fmt, info), backend.portable()):
                results.append(result)
                summary.add(result)
                raise_if_interrupted()
            raise_if_interrupted()
        except KeyboardInterrupt:
            _close(summary, results, started)
            error = JobInterrupted(
                f"interrupted with {summary.parts_done:,} of {len(parts):,} parts committed; "
                "rerun with --resume to finish",
                code=grpc.StatusCode.CANCELLED,
            )
            error.summary = summary
            raise error from None
    finally:
        engine.close()
    _close(summary, results, started)
    output.end_run()
    if summary.failed:
        error = DatasetIncomplete(
            f"{len(summary.failed):,} of {len(parts):,} parts could not be scored (see the "
            "summary); fix or remove those inputs and rerun with --resume"
        )
        error.summary = summary
        raise error
    summary.complete = True
    summary.rejects = output.finish(results, summary.to_dict(), job.rejects)
    return summary


def _close(summary: DatasetSummary, results: list[PartResult], started: float) -> None:
    summary.elapsed_s = time.monotonic() - started
    rows_now = sum(r.rows for r in results if not r.skipped and r.error is None)
    summary.rows_per_s = rows_now / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.set_workers(results)
    summary.driver_peak_rss_mb = peak_rss_mb()


class Engine(Protocol):
    """Runs parts and yields their results (in any order); `close` releases what it holds."""

    def run(
        self, parts: list[Part], settings: PartSettings, backend: Backend
    ) -> Iterator[PartResult]: ...

    def close(self) -> None: ...


def open_engine(job: DatasetJob) -> Engine:
    """The job's engine, ready to run: for Ray, connected to the cluster (or a new local one)."""
    if job.engine == "ray":
        from vaeserve.client.ray_engine import RayEngine, RayPool

        return RayEngine(
            RayPool(
                address=job.ray_address,
                workers=job.workers,
                cpus_per_worker=job.cpus_per_worker or 1.0,
                gpus_per_worker=job.gpus_per_worker,
                max_retries=job.max_retries,
                progress=_show(job.progress),
            )
        )
    threads = int(job.cpus_per_worker) if job.cpus_per_worker else 0
    return LocalEngine(threads, _show(job.progress))


class LocalEngine:
    """Every part in turn in this process, with a progress bar over parts."""

    def __init__(self, threads: int = 0, progress: bool = False) -> None:
        self.threads = threads  # onnxruntime threads for in-process scoring; 0: one per core
        self.progress = progress

    def run(
        self, parts: list[Part], settings: PartSettings, backend: Backend
    ) -> Iterator[PartResult]:
        """Score and commit the parts one by one."""
        if not parts:
            return
        from tqdm import tqdm

        output = DatasetOutput(settings.output, settings.output_format)
        node = socket.gethostname()
        bar = tqdm(total=len(parts), unit="part", disable=not self.progress, file=sys.stderr)
        with backend.open(self.threads) as client, bar:
            info = client.model_info(settings.model)
            for part in parts:
                result = score_part(client, info, part, settings, output, node=node)
                bar.update(1)
                yield result

    def close(self) -> None:
        """Nothing is held between runs."""


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress
