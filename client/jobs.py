"""The resumable `score` job: a file in, its scores in an output file, every row exactly once.

The job streams input chunks through `VaeClient.score` and writes each answer as it arrives, in
input order. After every written chunk it commits a checkpoint next to the output
(`OUT.progress.json`): input rows done, CSV lines skipped as malformed, and the byte lengths of the
output (or its Parquet spool) and of the rejects file. A resumed run truncates both files to those
lengths and skips the rows done, so an interrupted job ends with every input row exactly once in
the output or the rejects file. The checkpoint is deleted when the job completes.

Rows are never dropped silently. Rows with a missing or non-finite value, an unknown condition
label, or (CSV) the wrong number of fields are caught here and written to the rejects file with
the reason; only valid rows are sent. A batch the server still rejects as INVALID_ARGUMENT puts
all its rows in the rejects file with the server's message. Any other in-stream error (a server
limit, a missing model) stops the job, resumably, since it is not about the rows.

`ScoreRun` is the job step by step (open or resume, the next batches, write an answer, commit,
finish); the steps' parts (readers, RowChecks, ScoreOutput, writers, Checkpoint, RejectsFile)
work on their own for other drivers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from vaeserve.client.batches import Batch
from vaeserve.client.checkpoint import Checkpoint, checkpoint_path
from vaeserve.client.columns import ColumnSelection
from vaeserve.client.conditions import condition_encoder
from vaeserve.client.errors import VaeClientError
from vaeserve.client.interrupts import raise_if_interrupted
from vaeserve.client.job_summary import JobInterrupted, JobSummary
from vaeserve.client.library import VaeClient
from vaeserve.client.models import ModelInfo
from vaeserve.client.readers import InputReader, open_input
from vaeserve.client.rejects import RejectsFile, by_row, default_rejects_path
from vaeserve.client.results import ScoreResult
from vaeserve.client.row_checks import CheckedChunk, RowChecks
from vaeserve.client.score_output import ScoreOutput
from vaeserve.client.writers import TableWriter, detect_output_format, open_writer, spool_path
from vaeserve.common.scores import SCORE_NAMES

SCORE_OUTPUT_FORMATS = ("csv", "parquet", "jsonl")


@dataclass
class ScoreJob:
    """Everything the `score` job needs besides the connection."""

    input: str
    output: str
    model: str | None = None
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
    seed: int = 0
    kl_per_dim: bool = False
    explain: int = 0  # top features per row (0: none)
    keep_columns: bool = False
    rejects: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: only when stderr is a terminal

    def check(self) -> None:
        """VaeClientError for settings no run can use."""
        if self.batch_size < 1:
            raise VaeClientError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_in_flight < 1:
            raise VaeClientError(f"--in-flight must be >= 1, got {self.max_in_flight}")
        if self.score is not None and self.score not in SCORE_NAMES:
            raise VaeClientError(
                f"--score must be one of {sorted(SCORE_NAMES)}, got {self.score!r}"
            )
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise VaeClientError(
                f"--threshold must be a finite number of nats, got {self.threshold}"
            )
        if self.iw_samples < 0:
            raise VaeClientError(f"--iw-samples must be >= 0, got {self.iw_samples}")
        if self.explain < 0:
            raise VaeClientError(f"--explain must be >= 0, got {self.explain}")

    def selection(self, info: ModelInfo) -> ColumnSelection:
        """The input columns this job reads for a model."""
        return ColumnSelection(
            columns=self.columns,
            id_column=self.id_column,
            condition_column=self.condition_column,
            keep_columns=self.keep_columns,
            feature_names=info.feature_names,
            expected_dim=info.input_dim,
        )

    def fingerprint(self, reader: InputReader, fmt: str, info: ModelInfo) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        return {
            "input": self.input if self.input == "-" else os.path.abspath(self.input),
            "input_format": reader.format,
            "input_bytes": reader.size_bytes,
            "features": reader.features,
            "id_column": self.id_column,
            "condition_column": self.condition_column,
            "keep_columns": self.keep_columns,
            "output_format": fmt,
            "model": [info.name, info.version],
            "score": self.score,
            "threshold": self.threshold,
            "iw_samples": self.iw_samples,
            "seed": self.seed,
            "kl_per_dim": self.kl_per_dim,
            # only when asked for, so checkpoints of jobs from before explanations still match
            **({"explain": self.explain} if self.explain else {}),
        }


def run_score_job(client: VaeClient, job: ScoreJob) -> JobSummary:
    """Score a file into an output file, resumably; see the module docstring."""
    run = ScoreRun.open(client, job)
    try:
        run.start()
        results = client.score(
            run.batches(),
            model=run.model,
            score=job.score,
            threshold=job.threshold,
            include_kl_per_dim=job.kl_per_dim,
            iw_samples=job.iw_samples,
            seed=job.seed,
            explain=job.explain,
            max_in_flight=job.max_in_flight,
            raise_errors=False,
        )
        for result in results:
            run.write(result)
            run.commit()
            raise_if_interrupted()
        raise_if_interrupted()
        run.finish()
    except KeyboardInterrupt:
        raise run.interrupted() from None
    except VaeClientError as exc:
        run.explain_resume(exc)
        raise
    finally:
        run.close()
    return run.summary


class ScoreRun:
    """One run of a ScoreJob: `open` (start or resume), `start` (open the output), `batches`
    (the chunks to send), `write` (the answer to the oldest chunk sent), `commit`, `finish`;
    `close` always."""

    def __init__(
        self,
        job: ScoreJob,
        info: ModelInfo,
        reader: InputReader,
        fmt: str,
        ckpt: Checkpoint,
        checks: RowChecks,
    ) -> None:
        self.job = job
        self.info = info
        self.reader = reader
        self.fmt = fmt
        self.ckpt = ckpt
        self.checks = checks
        self.output = ScoreOutput.for_input(
            reader,
            latent_dim=info.latent_dim,
            id_column=job.id_column,
            keep_columns=job.keep_columns,
            iw_samples=job.iw_samples,
            kl_per_dim=job.kl_per_dim,
            explain=job.explain,
            input_dim=info.input_dim,
        )
        self.ckpt_file = None if job.output == "-" else checkpoint_path(job.output)
        self.rejects_path = job.rejects or default_rejects_path(job.output)
        self.resumed_at = ckpt.rows_done if job.resume and ckpt.rows_done else None
        self.summary = JobSummary(
            input=job.input,
            output=job.output,
            model=f"{info.name}:{info.version}",
            rows=ckpt.rows_done,
            resumed_at=self.resumed_at,
            rejects=self.rejects_path,
        )
        self.summary.set_counts(ckpt)
        self.writer: TableWriter | None = None
        self.rejects: RejectsFile | None = None
        self._sent: deque[CheckedChunk] = deque()
        self._bar: Any = None
        self._shown = ckpt.rows_done
        self._started = time.monotonic()

    @property
    def model(self) -> tuple[str, int]:
        """The model version this run scores with (the interrupted run's, when resuming)."""
        return (self.info.name, self.info.version)

    @classmethod
    def open(cls, client: VaeClient, job: ScoreJob) -> ScoreRun:
        """Check the job, find its checkpoint (or make sure it starts clean), resolve the model
        and open the input; nothing is written yet."""
        job.check()
        fmt = detect_output_format(job.output, job.output_format, SCORE_OUTPUT_FORMATS)
        ckpt = _check_output(job)
        model = job.model
        if ckpt is not None:
            name, version = ckpt.job["model"]
            if model and model not in (name, f"{name}:{version}"):
                raise VaeClientError(
                    f"the interrupted job used model {name}:{version}, not {model}; resume with "
                    "the same model (or start over with --overwrite)"
                )
            model = f"{name}:{version}"
        info = client.model_info(model)
        check_explain(info, job.explain)
        encode_condition = condition_encoder(info, job.condition_column)
        reader = open_input(job.input, job.selection(info), fmt=job.input_format)
        fingerprint = job.fingerprint(reader, fmt, info)
        if ckpt is None:
            ckpt = Checkpoint(job=fingerprint)
        elif changed := ckpt.changed(fingerprint):
            reader.close()
            raise VaeClientError(
                f"cannot resume: {', '.join(changed)} differ from the interrupted job's "
                f"(see {checkpoint_path(job.output)}); rerun with the same input and options, "
                "or --overwrite"
            )
        checks = RowChecks(reader.features, job.id_column, job.condition_column, encode_condition)
        return cls(job, info, reader, fmt, ckpt, checks)

    def start(self) -> None:
        """Open the output and rejects files (truncated to the checkpoint when resuming) and
        commit the starting point."""
        resume = self.job.resume
        self.writer = open_writer(
            self.job.output,
            self.fmt,
            self.output.schema,
            resume_at=self.ckpt.output_bytes if resume else None,
        )
        self.rejects = RejectsFile(self.rejects_path, self.ckpt.rejects_bytes if resume else 0)
        self.commit()
        self._bar = _progress_bar(self.job.progress, self.reader.num_rows, self.ckpt.rows_done)

    def batches(self) -> Iterator[Batch]:
        """The valid rows of each chunk not yet done, as Batches; `write` takes the answers."""
        for chunk in self.reader.chunks(
            self.job.batch_size,
            skip_rows=self.ckpt.rows_done,
            skip_malformed=self.ckpt.malformed_done,
        ):
            checked = self.checks.check(chunk)
            self._sent.append(checked)
            yield checked.batch()

    def write(self, result: ScoreResult) -> None:
        """Write the answer to the oldest chunk sent: scores to the output, rejects to the
        rejects file (a batch the server refused as INVALID_ARGUMENT is all rejects)."""
        assert self.writer is not None and self.rejects is not None
        checked = self._sent.popleft()
        rejects = list(checked.rejects)
        sent = checked.sent
        if result.error is not None:
            if result.error.code != grpc.StatusCode.INVALID_ARGUMENT:
                # Not about the rows (a limit, a missing model, a server fault): stop, resumably.
                raise result.error
            rejects += checked.reject_sent(f"the server rejected the batch: {result.error.details}")
        elif len(sent):
            self.writer.write(self.output.table(result, checked.chunk, sent))
            self.ckpt.scored += len(sent)
            self.ckpt.anomalies += int(np.count_nonzero(result.is_anomaly))
        self.rejects.write(by_row(rejects))
        self.ckpt.rejected += len(rejects)
        self.ckpt.rows_done = checked.chunk.start + len(checked.chunk)
        self.ckpt.malformed_done += len(checked.chunk.malformed)

    def commit(self) -> None:
        """Flush the output and rejects and record their lengths in the checkpoint."""
        assert self.writer is not None and self.rejects is not None
        self.ckpt.output_bytes = self.writer.commit()
        self.ckpt.rejects_bytes = self.rejects.commit()
        if self.ckpt_file:
            self.ckpt.save(self.ckpt_file)
        if self._bar is not None:  # None at the starting commit
            self._bar.update(self.ckpt.rows_done - self._shown)
            self._shown = self.ckpt.rows_done
            self._bar.set_postfix_str(
                f"anomalies={self.ckpt.anomalies:,} rejected={self.ckpt.rejected:,}",
                refresh=False,
            )

    def finish(self) -> None:
        """Complete the output and drop the checkpoint: the job is done."""
        assert self.writer is not None and self.rejects is not None
        if self._sent:
            raise VaeClientError(f"{len(self._sent)} input batches got no answer")
        self._bar.close()
        self.writer.finish()
        self.writer = None
        self.rejects.close()
        if self.ckpt_file:
            _remove(self.ckpt_file)
        self.summary.complete = True

    def interrupted(self) -> JobInterrupted:
        """The error for a stop (Ctrl-C, SIGTERM): how to continue, and the summary so far."""
        how = "rerun with --resume to finish" if self.ckpt_file else "stdout output cannot resume"
        error = JobInterrupted(
            f"interrupted after {self.ckpt.rows_done:,} rows; {how}",
            code=grpc.StatusCode.CANCELLED,
        )
        error.summary = self.summary
        return error

    def explain_resume(self, exc: VaeClientError) -> None:
        """Add to a failure's message that the committed rows can be resumed."""
        if self.ckpt_file and self.ckpt.rows_done and not isinstance(exc, JobInterrupted):
            exc.message = (
                f"{exc.message}\n{self.ckpt.rows_done:,} rows are done and committed; rerun "
                "with --resume to continue"
            )
            exc.args = (exc.message,)

    def close(self) -> None:
        """Release the files, keeping what was committed, and fill in the summary."""
        if self._bar is not None:
            self._bar.close()
        if self.writer is not None:
            self.writer.abort()
        if self.rejects is not None:
            self.rejects.close()
        self.reader.close()
        elapsed = time.monotonic() - self._started
        self.summary.rows = self.ckpt.rows_done
        self.summary.set_counts(self.ckpt)
        self.summary.elapsed_s = elapsed
        done_now = self.ckpt.rows_done - (self.resumed_at or 0)
        self.summary.rows_per_s = done_now / elapsed if elapsed > 0 else 0.0
        if not self.summary.rejected:
            self.summary.rejects = None


def check_explain(info: ModelInfo, explain: int) -> None:
    """FAILED_PRECONDITION before any work when explanations are asked of a model without
    an explainer (an export from before them)."""
    if explain and not info.explain:
        raise VaeClientError(
            f"--explain: model {info.name}:{info.version} offers no explanations"
            + (f" ({info.unavailable})" if info.unavailable else ""),
            code=grpc.StatusCode.FAILED_PRECONDITION,
        )


def _check_output(job: ScoreJob) -> Checkpoint | None:
    """The interrupted run's checkpoint when resuming; otherwise make sure of a clean start
    (--overwrite removes an old checkpoint and spool; without it nothing is replaced)."""
    if job.output == "-":
        if job.resume:
            raise VaeClientError("--resume needs an output file, not stdout")
        return None
    if os.path.abspath(job.output) == os.path.abspath(job.input):
        raise VaeClientError("the output would overwrite the input")
    ckpt_file = checkpoint_path(job.output)
    if os.path.exists(ckpt_file):
        if job.overwrite:
            _remove(ckpt_file, spool_path(job.output))
        elif job.resume:
            return Checkpoint.load(ckpt_file)
        else:
            raise VaeClientError(
                f"{job.output}: an interrupted job left {ckpt_file}; pass --resume to finish it "
                "or --overwrite to start over"
            )
    elif job.resume and os.path.exists(job.output):
        raise VaeClientError(
            f"{job.output}: nothing to resume (no {ckpt_file}); the job already finished, "
            "or the file is not a vae-client output. Pass --overwrite to score again"
        )
    elif os.path.exists(job.output) and not job.overwrite:
        raise VaeClientError(f"{job.output} exists; pass --overwrite to replace it")
    return None


def _progress_bar(enabled: bool | None, total: int | None, initial: int) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total,
        initial=initial,
        unit="rows",
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.1,
        disable=not show,
        file=sys.stderr,
        desc="scoring",
    )


def _remove(*paths: str) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
