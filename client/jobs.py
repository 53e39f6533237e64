"""Batch jobs over files: the resumable `score` job and the row-by-row transforms.

The score job streams input chunks through `VaeClient.score` and writes each answer as it
arrives, in input order. After every written chunk it commits a checkpoint next to the output
(`OUT.progress.json`): input rows done, CSV lines skipped as malformed, and the byte lengths of the
output (or its Parquet spool) and of the rejects file. A resumed run truncates both files to those
lengths and skips the rows done, so an interrupted job ends with every input row exactly once in
the output or the rejects file. The checkpoint is deleted when the job completes.

Rows are never dropped silently. Rows with a missing or non-finite value, an unknown condition
label, or (CSV) the wrong number of fields are caught here and written to the rejects file with
the reason; only valid rows are sent. A batch the server still rejects as INVALID_ARGUMENT puts
all its rows in the rejects file with the server's message. Any other in-stream error (a server
limit, a missing model) stops the job, resumably, since it is not about the rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import grpc
import numpy as np
import pyarrow as pa

from vaeserve.client.errors import VaeClientError
from vaeserve.client.library import (
    Batch,
    ModelInfo,
    ModelLike,
    ScoreResult,
    VaeClient,
)
from vaeserve.client.readers import InputChunk, InputReader, open_input
from vaeserve.client.writers import (
    TableWriter,
    detect_output_format,
    float_columns,
    open_writer,
    spool_path,
    write_tables,
)
from vaeserve.common.scores import SCORE_NAMES

CHECKPOINT_VERSION = 1
SCORE_OUTPUT_FORMATS = ("csv", "parquet", "jsonl")
REJECT_COLUMNS = ("row", "id", "reason")


class JobInterrupted(VaeClientError):
    """The job was stopped (Ctrl-C, SIGTERM); what was committed can be resumed."""

    summary: JobSummary | None = None


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
    keep_columns: bool = False
    rejects: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: only when stderr is a terminal


@dataclass
class JobSummary:
    """What a job did: counts, timing and where things went."""

    input: str
    output: str
    model: str
    rows: int = 0
    scored: int = 0
    anomalies: int = 0
    rejected: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    resumed_at: int | None = None
    rejects: str | None = None
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def text(self) -> str:
        """A one-line human summary."""
        state = "done" if self.complete else "stopped"
        text = (
            f"{state}: {self.rows:,} rows with {self.model}: {self.scored:,} scored, "
            f"{self.anomalies:,} anomalies, {self.rejected:,} rejected; "
            f"{self.elapsed_s:.1f} s, {self.rows_per_s:,.0f} rows/s"
        )
        if self.resumed_at:
            text += f" (resumed at row {self.resumed_at:,})"
        text += f" -> {self.output}"
        if self.rejected and self.rejects:
            text += f"; rejects in {self.rejects}"
        return text


@dataclass
class _Checkpoint:
    job: dict[str, Any]
    rows_done: int = 0
    malformed_done: int = 0
    output_bytes: int = 0
    rejects_bytes: int = 0
    scored: int = 0
    anomalies: int = 0
    rejected: int = 0
    version: int = CHECKPOINT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(output: str) -> str:
    """The sidecar file where a job records its committed progress."""
    return f"{output}.progress.json"


def default_rejects_path(output: str) -> str:
    """OUT.rejects.csv next to the output (vae-client-rejects.csv for stdout)."""
    if output == "-":
        return "vae-client-rejects.csv"
    base = output
    for ext in (".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return f"{base}.rejects.csv"


def _read_checkpoint(path: str) -> _Checkpoint:
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != CHECKPOINT_VERSION:
            raise VaeClientError(f"{path}: checkpoint version {data.get('version')} is unknown")
        return _Checkpoint(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise VaeClientError(
            f"{path}: the checkpoint is unreadable ({exc}); start over with --overwrite"
        ) from None


def _write_checkpoint(path: str, ckpt: _Checkpoint) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(ckpt), f)
    os.replace(tmp, path)


class _RejectsFile:
    """The rejects CSV (row, id, reason): opened on the first reject, resumable by length."""

    def __init__(self, path: str, resume_at: int) -> None:
        self.path = path
        self._file: io.BufferedWriter | None = None
        if resume_at > 0:
            if not os.path.exists(path) or os.path.getsize(path) < resume_at:
                raise VaeClientError(
                    f"{path}: the checkpoint says {resume_at} bytes of rejects were committed "
                    "but the file is shorter or gone"
                )
            self._file = open(path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.truncate(resume_at)
            self._file.seek(resume_at)
        elif os.path.exists(path):
            os.remove(path)

    def write(self, rows: list[tuple[Any, Any, str]]) -> None:
        if not rows:
            return
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if self._file is None:
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
            writer.writerow(REJECT_COLUMNS)
        writer.writerows(("" if v is None else v for v in row) for row in rows)
        self._file.write(text.getvalue().encode())

    def commit(self) -> int:
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _fingerprint(job: ScoreJob, reader: InputReader, fmt: str, info: ModelInfo) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption."""
    return {
        "input": job.input if job.input == "-" else os.path.abspath(job.input),
        "input_format": reader.format,
        "input_bytes": reader.size_bytes,
        "features": reader.features,
        "id_column": job.id_column,
        "condition_column": job.condition_column,
        "keep_columns": job.keep_columns,
        "output_format": fmt,
        "model": [info.name, info.version],
        "score": job.score,
        "threshold": job.threshold,
        "iw_samples": job.iw_samples,
        "seed": job.seed,
        "kl_per_dim": job.kl_per_dim,
    }


def _output_layout(
    job: ScoreJob, reader: InputReader, info: ModelInfo
) -> tuple[pa.Schema, list[tuple[str, str]]]:
    """The output schema and which kept input column feeds each trailing output column."""
    fields: list[pa.Field] = []
    if job.id_column:
        fields.append(pa.field(job.id_column, reader.column_types([job.id_column])[job.id_column]))
    else:
        fields.append(pa.field("row", pa.int64()))
    fields += [
        pa.field("kl", pa.float32()),
        pa.field("recon_nll", pa.float32()),
        pa.field("neg_elbo", pa.float32()),
        pa.field("p_value", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
    ]
    if job.iw_samples:
        fields.append(pa.field("iw_nll", pa.float32()))
    if job.kl_per_dim:
        fields += [pa.field(f"kl_dim_{d}", pa.float32()) for d in range(info.latent_dim)]
    kept: list[tuple[str, str]] = []
    if job.keep_columns:
        taken = {f.name for f in fields}
        types = reader.column_types(reader.columns)
        for c in reader.columns:
            if c == job.id_column:
                continue
            name = c
            while name in taken:
                name = f"input_{name}"
            taken.add(name)
            kept.append((c, name))
            fields.append(pa.field(name, types[c]))
    return pa.schema(fields), kept


def _bad_row_reasons(rows: np.ndarray, bad: np.ndarray, features: Sequence[str]) -> list[str]:
    """Why each of the given rows cannot be scored (its first non-finite value)."""
    reasons = []
    sub = rows[bad]
    finite = np.isfinite(sub)
    for i in range(len(sub)):
        j = int(np.argmin(finite[i]))
        value = sub[i, j]
        what = "missing or NaN" if np.isnan(value) else f"non-finite ({value})"
        reasons.append(f"{what} value in column {features[j]!r}")
    return reasons


def _condition_encoder(
    info: ModelInfo, job: ScoreJob
) -> Callable[[pa.Table], tuple[np.ndarray, np.ndarray]] | None:
    """Labels -> one-hot rows for conditional models (and a mask of known labels)."""
    if info.cond_dim == 0:
        if job.condition_column:
            raise VaeClientError(
                f"model {info.name}:{info.version} is not conditional; drop --condition-column"
            )
        return None
    if not job.condition_column:
        raise VaeClientError(
            f"model {info.name}:{info.version} is conditional (classes "
            f"{info.condition_classes}); name the label column with --condition-column"
        )
    if not info.condition_classes:
        raise VaeClientError(
            f"model {info.name}:{info.version} takes a numeric condition without class labels; "
            "score it with the Python library (VaeClient.score with Batch(condition=...))"
        )
    return lambda aux: one_hot(aux.column(job.condition_column), info.condition_classes)


def one_hot(labels: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot float32 rows of labels (compared as text) and a mask of the known ones."""
    index = {str(c): i for i, c in enumerate(classes)}
    values = labels.to_pylist() if hasattr(labels, "to_pylist") else list(labels)
    idx = np.array([index.get(str(v), -1) if v is not None else -1 for v in values], np.int64)
    out = np.zeros((len(idx), len(classes)), np.float32)
    known = idx >= 0
    out[np.flatnonzero(known), idx[known]] = 1.0
    return out, known


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


def run_score_job(client: VaeClient, job: ScoreJob) -> JobSummary:
    """Score a file into an output file, resumably; see the module docstring."""
    if job.batch_size < 1:
        raise VaeClientError(f"--batch-size must be >= 1, got {job.batch_size}")
    if job.max_in_flight < 1:
        raise VaeClientError(f"--in-flight must be >= 1, got {job.max_in_flight}")
    if job.score is not None and job.score not in SCORE_NAMES:
        raise VaeClientError(f"--score must be one of {sorted(SCORE_NAMES)}, got {job.score!r}")
    if job.threshold is not None and not np.isfinite(job.threshold):
        raise VaeClientError(f"--threshold must be a finite number of nats, got {job.threshold}")
    if job.iw_samples < 0:
        raise VaeClientError(f"--iw-samples must be >= 0, got {job.iw_samples}")
    fmt = detect_output_format(job.output, job.output_format, SCORE_OUTPUT_FORMATS)
    stdout = job.output == "-"
    if stdout and job.resume:
        raise VaeClientError("--resume needs an output file, not stdout")
    if not stdout and os.path.abspath(job.output) == os.path.abspath(job.input):
        raise VaeClientError("the output would overwrite the input")
    ckpt_file = None if stdout else checkpoint_path(job.output)
    rejects_path = job.rejects or default_rejects_path(job.output)

    ckpt: _Checkpoint | None = None
    if ckpt_file and os.path.exists(ckpt_file):
        if job.overwrite:
            _remove(ckpt_file, spool_path(job.output))
        elif job.resume:
            ckpt = _read_checkpoint(ckpt_file)
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
    elif not stdout and os.path.exists(job.output) and not job.overwrite:
        raise VaeClientError(f"{job.output} exists; pass --overwrite to replace it")

    model = job.model
    if ckpt is not None:
        name, version = ckpt.job["model"]
        if model and model not in (name, f"{name}:{version}"):
            raise VaeClientError(
                f"the interrupted job used model {name}:{version}, not {model}; resume with the "
                "same model (or start over with --overwrite)"
            )
        model = f"{name}:{version}"
    info = client.model_info(model)
    encode_condition = _condition_encoder(info, job)
    reader = open_input(
        job.input,
        fmt=job.input_format,
        columns=job.columns,
        id_column=job.id_column,
        condition_column=job.condition_column,
        keep_columns=job.keep_columns,
        feature_names=info.feature_names,
        expected_dim=info.input_dim,
    )
    fingerprint = _fingerprint(job, reader, fmt, info)
    if ckpt is not None:
        changed = [k for k, v in fingerprint.items() if ckpt.job.get(k) != v]
        if changed:
            reader.close()
            raise VaeClientError(
                f"cannot resume: {', '.join(changed)} differ from the interrupted job's "
                f"(see {ckpt_file}); rerun with the same input and options, or --overwrite"
            )
    else:
        ckpt = _Checkpoint(job=fingerprint)
    schema, kept = _output_layout(job, reader, info)
    resumed_at = ckpt.rows_done if job.resume and ckpt.rows_done else None
    writer: TableWriter | None = None
    rejects: _RejectsFile | None = None
    summary = JobSummary(
        input=job.input,
        output=job.output,
        model=f"{info.name}:{info.version}",
        rows=ckpt.rows_done,
        scored=ckpt.scored,
        anomalies=ckpt.anomalies,
        rejected=ckpt.rejected,
        resumed_at=resumed_at,
        rejects=rejects_path,
    )
    started = time.monotonic()
    bar = None
    try:
        writer = open_writer(
            job.output, fmt, schema, resume_at=ckpt.output_bytes if job.resume else None
        )
        rejects = _RejectsFile(rejects_path, ckpt.rejects_bytes if job.resume else 0)
        ckpt.output_bytes = writer.commit()
        ckpt.rejects_bytes = rejects.commit()
        if ckpt_file:
            _write_checkpoint(ckpt_file, ckpt)
        bar = _progress_bar(job.progress, reader.num_rows, ckpt.rows_done)
        pending: deque[tuple[InputChunk, np.ndarray, np.ndarray | None]] = deque()

        def batches() -> Iterator[Batch]:
            for chunk in reader.chunks(
                job.batch_size, skip_rows=ckpt.rows_done, skip_malformed=ckpt.malformed_done
            ):
                valid = np.isfinite(chunk.rows).all(axis=1)
                condition = known = None
                if encode_condition is not None and chunk.aux is not None:
                    condition, known = encode_condition(chunk.aux)
                    valid &= known
                pending.append((chunk, valid, known))
                if valid.all():  # contiguous row numbers: send the first, not all of them
                    yield Batch(rows=chunk.rows, condition=condition, start=chunk.start)
                    continue
                keep = np.flatnonzero(valid)
                yield Batch(
                    rows=chunk.rows[keep],
                    row_ids=chunk.row_numbers[keep],
                    condition=None if condition is None else condition[keep],
                )

        results = client.score(
            batches(),
            model=(info.name, info.version),
            score=job.score,
            threshold=job.threshold,
            include_kl_per_dim=job.kl_per_dim,
            iw_samples=job.iw_samples,
            seed=job.seed,
            max_in_flight=job.max_in_flight,
            raise_errors=False,
        )
        for result in results:
            chunk, valid, known = pending.popleft()
            scored, anomalies, rejected = _write_chunk(
                writer, rejects, chunk, valid, known, result, job, reader, kept, schema
            )
            ckpt.rows_done = chunk.start + len(chunk)
            ckpt.malformed_done += len(chunk.malformed)
            ckpt.scored += scored
            ckpt.anomalies += anomalies
            ckpt.rejected += rejected
            ckpt.output_bytes = writer.commit()
            ckpt.rejects_bytes = rejects.commit()
            if ckpt_file:
                _write_checkpoint(ckpt_file, ckpt)
            bar.update(len(chunk))
            bar.set_postfix_str(
                f"anomalies={ckpt.anomalies:,} rejected={ckpt.rejected:,}", refresh=False
            )
        if pending:
            raise VaeClientError(f"{len(pending)} input batches got no answer")
        bar.close()
        writer.finish()
        writer = None
        rejects.close()
        if ckpt_file:
            _remove(ckpt_file)
        summary.complete = True
    except KeyboardInterrupt:
        interrupted = JobInterrupted(
            f"interrupted after {ckpt.rows_done:,} rows; "
            + ("rerun with --resume to finish" if ckpt_file else "stdout output cannot resume"),
            code=grpc.StatusCode.CANCELLED,
        )
        interrupted.summary = summary
        raise interrupted from None
    except VaeClientError as exc:
        if ckpt_file and ckpt.rows_done and not isinstance(exc, JobInterrupted):
            exc.message = (
                f"{exc.message}\n{ckpt.rows_done:,} rows are done and committed; rerun with "
                "--resume to continue"
            )
            exc.args = (exc.message,)
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.abort()
        if rejects is not None:
            rejects.close()
        reader.close()
        elapsed = time.monotonic() - started
        summary.rows = ckpt.rows_done
        summary.scored = ckpt.scored
        summary.anomalies = ckpt.anomalies
        summary.rejected = ckpt.rejected
        summary.elapsed_s = elapsed
        done_now = ckpt.rows_done - (resumed_at or 0)
        summary.rows_per_s = done_now / elapsed if elapsed > 0 else 0.0
        if not summary.rejected:
            summary.rejects = None
    return summary


def _write_chunk(
    writer: TableWriter,
    rejects: _RejectsFile,
    chunk: InputChunk,
    valid: np.ndarray,
    known: np.ndarray | None,
    result: ScoreResult,
    job: ScoreJob,
    reader: InputReader,
    kept: list[tuple[str, str]],
    schema: pa.Schema,
) -> tuple[int, int, int]:
    """Write one chunk's scores and rejects; (scored, anomalies, rejected) counts."""
    ids = None
    if job.id_column and chunk.aux is not None:
        ids = chunk.aux.column(job.id_column).to_pylist()
    numbers = chunk.row_numbers

    def ident(i: int) -> Any:
        return ids[i] if ids is not None else None

    reject_rows: list[tuple[Any, Any, str]] = [(None, None, m.reason) for m in chunk.malformed]
    bad = np.flatnonzero(~valid)
    if len(bad):
        finite = np.isfinite(chunk.rows[bad]).all(axis=1)
        reasons = _bad_row_reasons(chunk.rows, bad[~finite], reader.features)
        label_reason = (
            f"unknown condition label in column {job.condition_column!r}"
            if known is not None
            else ""
        )
        it = iter(reasons)
        for i, ok_values in zip(bad, finite, strict=True):
            reason = label_reason if ok_values else next(it)
            reject_rows.append((int(numbers[i]), ident(int(i)), reason))
    good = np.flatnonzero(valid)
    scored = anomalies = 0
    if result.error is not None and result.error.code != grpc.StatusCode.INVALID_ARGUMENT:
        # Not about the rows (a limit, a missing model, a server fault): stop, resumably.
        raise result.error
    if result.error is not None:
        reason = f"the server rejected the batch: {result.error.details}"
        reject_rows += [(int(numbers[i]), ident(int(i)), reason) for i in good]
        good = good[:0]
    elif len(good):
        if not np.array_equal(result.row_ids, numbers[good]):
            raise VaeClientError(
                f"rows {int(numbers[good][0])}..: the server's row ids do not match the rows sent",
                code=grpc.StatusCode.INTERNAL,
            )
        columns: dict[str, Any] = {}
        first = schema.field(0)
        if ids is not None:
            columns[first.name] = chunk.aux.column(job.id_column).take(pa.array(good))
        else:
            columns["row"] = pa.array(numbers[good], pa.int64())
        columns["kl"] = result.kl
        columns["recon_nll"] = result.recon_nll
        columns["neg_elbo"] = result.neg_elbo
        columns["p_value"] = result.p_value
        columns["is_anomaly"] = result.is_anomaly
        if job.iw_samples:
            columns["iw_nll"] = result.iw_nll
        if job.kl_per_dim and result.kl_per_dim is not None:
            for d in range(result.kl_per_dim.shape[1]):
                columns[f"kl_dim_{d}"] = result.kl_per_dim[:, d]
        if kept and chunk.aux is not None:
            take = pa.array(good)
            for source, name in kept:
                columns[name] = chunk.aux.column(source).take(take)
        arrays = [
            columns[f.name]
            if isinstance(columns[f.name], pa.ChunkedArray | pa.Array)
            else pa.array(np.asarray(columns[f.name]), f.type)
            for f in schema
        ]
        writer.write(pa.Table.from_arrays(arrays, schema=schema))
        scored = len(good)
        anomalies = int(np.count_nonzero(result.is_anomaly))
    reject_rows.sort(key=lambda r: -1 if r[0] is None else r[0])
    rejects.write(reject_rows)
    return scored, anomalies, len(reject_rows)


def _remove(*paths: str) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


# ---------------------------------------------------------------------- row transforms
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
    if kind not in ("encode", "decode", "reconstruct"):
        raise VaeClientError(f"unknown transform {kind!r}")
    if batch_size < 1:
        raise VaeClientError(f"--batch-size must be >= 1, got {batch_size}")
    fmt = detect_output_format(output, output_format)
    if output != "-" and os.path.exists(output) and not overwrite:
        raise VaeClientError(f"{output} exists; pass --overwrite to replace it")
    info = client.model_info(model, cached=True)
    width = info.latent_dim if kind == "decode" else info.input_dim
    latent_names = [f"z_{d}" for d in range(info.latent_dim)]
    reader = open_input(
        input,
        fmt=input_format,
        columns=columns,
        id_column=id_column,
        feature_names=latent_names if kind == "decode" else info.feature_names,
        expected_dim=width,
    )
    cond = condition_rows(info, condition)
    feature_names = info.feature_names or [f"x{i}" for i in range(info.input_dim)]
    if kind == "encode":
        value_names = [f"mu_{d}" for d in range(info.latent_dim)]
        value_names += [f"logvar_{d}" for d in range(info.latent_dim)]
        if sample:
            value_names += latent_names
    else:
        value_names = list(feature_names)
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


def condition_rows(info: ModelInfo, label: str | None) -> np.ndarray | None:
    """A [1, cond_dim] one-hot row for a class label; None for unconditional models."""
    if info.cond_dim == 0:
        if label is not None:
            raise VaeClientError(f"model {info.name}:{info.version} is not conditional")
        return None
    if label is None:
        raise VaeClientError(
            f"model {info.name}:{info.version} is conditional; pass --condition LABEL "
            f"(one of {info.condition_classes})"
        )
    if not info.condition_classes:
        raise VaeClientError("the model's condition has no class labels; use the library")
    onehot, known = one_hot([label], info.condition_classes)
    if not known[0]:
        raise VaeClientError(
            f"condition {label!r} is not one of the model's classes {info.condition_classes}"
        )
    return onehot


def write_rows(
    output: str,
    matrix: np.ndarray,
    names: Sequence[str],
    *,
    output_format: str | None = None,
    lead: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a small in-memory matrix (with optional leading columns) in any output format."""
    fmt = detect_output_format(output, output_format)
    columns: dict[str, pa.Array] = {}
    if lead and fmt != "npy":
        columns.update({k: pa.array(v) for k, v in lead.items()})
    columns.update(zip(names, float_columns(matrix), strict=True))
    table = pa.table(columns)
    write_tables(output, fmt, table.schema, [table])


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
    names = list(info.feature_names or [f"x{i}" for i in range(info.input_dim)])
    if with_z:
        names += [f"z_{d}" for d in range(info.latent_dim)]
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


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Straight-line interpolation between two vectors."""
    t = t[:, None].astype(np.float64)
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


def print_summary(summary: JobSummary, stream: TextIO | None = None) -> None:
    """Print the summary line to stderr."""
    print(summary.text(), file=stream or sys.stderr)
