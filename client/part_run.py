"""Score one part of a dataset into its output file and commit it: what a worker (a Ray actor,
or the local engine's loop) does for each part.

The steps are the single-file job's (client/jobs.py): the input read in chunks of
`batch_size` rows, RowChecks, the model's answers in input order through the same
`client.score` (a VaeClient, or a LocalModelClient in this process), ScoreOutput's columns,
the same writers and rejects file. What differs is the ending: instead of a checkpoint per
chunk, the finished files are committed whole (DatasetOutput.commit), and a part with no id
column gets a `file` column, so (file, row) names every output row across the dataset.

Memory per worker is bounded by the batch size, never by the part: one Parquet read batch
(about 4 MiB of values) or CSV block (4 MiB), `max_in_flight` batches waiting for answers,
and the writer's buffer; the output itself goes to disk as it is written.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from vaeserve.client.columns import ColumnSelection
from vaeserve.client.conditions import condition_encoder
from vaeserve.client.dataset_output import DatasetOutput, PartResult
from vaeserve.client.dataset_parts import Part
from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo
from vaeserve.client.readers import InputChunk, InputReader, open_input
from vaeserve.client.rejects import RejectsFile, by_row
from vaeserve.client.row_checks import CheckedChunk, RowChecks
from vaeserve.client.score_output import ScoreOutput
from vaeserve.client.writers import open_writer

FILE_COLUMN = "file"


class PartInputError(VaeClientError):
    """A part's input cannot be scored (unreadable, wrong columns): that part fails and is
    reported, the job goes on. Any other error stops the job."""


@dataclass(frozen=True)
class PartSettings:
    """What a worker needs besides the model to score parts (picklable: it travels to Ray)."""

    model: str  # NAME:VERSION, resolved once by the driver so every worker uses the same
    output: str
    output_format: str
    columns: Sequence[str] | None = None
    id_column: str | None = None
    condition_column: str | None = None
    keep_columns: bool = False
    batch_size: int = 1024
    max_in_flight: int = 4
    score: str | None = None
    threshold: float | None = None
    kl_per_dim: bool = False
    explain: int = 0  # top features per row (0: none)

    def selection(self, info: ModelInfo) -> ColumnSelection:
        """The input columns the job reads for a model."""
        return ColumnSelection(
            columns=self.columns,
            id_column=self.id_column,
            condition_column=self.condition_column,
            keep_columns=self.keep_columns,
            feature_names=info.feature_names,
            expected_dim=info.input_dim,
        )


def open_part_input(part: Part, settings: PartSettings, info: ModelInfo) -> InputReader:
    """The part's input, opened with the job's columns; PartInputError when it cannot be."""
    try:
        return open_input(part.path, settings.selection(info), fmt=part.format)
    except VaeClientError as exc:
        raise PartInputError(exc.message) from None
    except OSError as exc:
        raise PartInputError(f"{part.path}: {exc}") from None


def score_part(
    client: Any,
    info: ModelInfo,
    part: Part,
    settings: PartSettings,
    output: DatasetOutput,
    *,
    node: str = "",
) -> PartResult:
    """Score one part and commit it; the committed result (with `skipped` when an earlier
    attempt had committed it already), or an uncommitted result with `error` when its input
    cannot be scored. `client` is a VaeClient or LocalModelClient."""
    done = output.find_committed(part)
    if done is not None:
        return done
    started = time.monotonic()
    result = PartResult(
        index=part.index,
        name=part.name,
        input=part.path,
        size=part.size,
        start=part.start,
        stop=part.stop,
        node=node,
    )
    result.pid = os.getpid()
    scratch = output.scratch()
    try:
        try:
            reader = open_part_input(part, settings, info)
        except PartInputError as exc:
            result.error = exc.message
            return result
        try:
            files = _score_into(client, info, part, settings, reader, scratch, output, result)
        except PartInputError as exc:
            result.error = exc.message
            return result
        finally:
            reader.close()
        result.seconds = time.monotonic() - started
        result.peak_rss_mb = peak_rss_mb()
        return output.commit(part, files[0], files[1], result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _score_into(
    client: Any,
    info: ModelInfo,
    part: Part,
    settings: PartSettings,
    reader: InputReader,
    scratch: str,
    output: DatasetOutput,
    result: PartResult,
) -> tuple[str, str | None]:
    """Write the part's scores and rejects into scratch; (output file, rejects file or
    None). Fills in the result's counts."""
    layout = ScoreOutput.for_input(
        reader,
        latent_dim=info.latent_dim,
        id_column=settings.id_column,
        keep_columns=settings.keep_columns,
        kl_per_dim=settings.kl_per_dim,
        explain=settings.explain,
        input_dim=info.input_dim,
    )
    schema = layout.schema
    if not settings.id_column:
        schema = pa.schema([pa.field(FILE_COLUMN, pa.string()), *schema])
    checks = RowChecks(
        reader.features,
        settings.id_column,
        settings.condition_column,
        condition_encoder(info, settings.condition_column),
    )
    out_file = os.path.join(scratch, output.output_name(part))
    rejects_file = os.path.join(scratch, "rejects.csv")
    writer = open_writer(out_file, settings.output_format, schema)
    rejects = RejectsFile(rejects_file)
    sent: deque[CheckedChunk] = deque()

    def batches() -> Iterator[Any]:
        for chunk in _chunks(reader, part, settings.batch_size):
            checked = checks.check(chunk)
            sent.append(checked)
            yield checked.batch()

    try:
        answers = client.score(
            batches(),
            model=settings.model,
            score=settings.score,
            threshold=settings.threshold,
            include_kl_per_dim=settings.kl_per_dim,
            explain=settings.explain,
            max_in_flight=settings.max_in_flight,
            raise_errors=False,
        )
        for answer in answers:
            checked = sent.popleft()
            bad = list(checked.rejects)
            if answer.error is not None:
                if answer.error.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise answer.error
                bad += checked.reject_sent(f"the server rejected the batch: {answer.error.details}")
            elif len(checked.sent):
                table = layout.table(answer, checked.chunk, checked.sent)
                if not settings.id_column:
                    names = pa.array([part.path] * table.num_rows, pa.string())
                    table = table.add_column(0, FILE_COLUMN, names)
                writer.write(table)
                result.scored += len(checked.sent)
                result.anomalies += int(np.count_nonzero(answer.is_anomaly))
            rejects.write(by_row(bad))
            result.rejected += len(bad)
            result.rows += len(checked.chunk)
        if sent:
            raise VaeClientError(f"{part.path}: {len(sent)} batches got no answer")
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        rejects.close()
    return out_file, rejects_file if os.path.exists(rejects_file) else None


def _chunks(reader: InputReader, part: Part, batch_size: int) -> Iterator[InputChunk]:
    """The part's chunks: from its first row to its last; reading errors are the input's."""
    try:
        for chunk in reader.chunks(batch_size, skip_rows=part.start):
            if part.stop is not None:
                if chunk.start >= part.stop:
                    return
                keep = part.stop - chunk.start
                if keep < len(chunk):
                    aux = chunk.aux.slice(0, keep) if chunk.aux is not None else None
                    yield InputChunk(chunk.start, chunk.rows[:keep], aux, chunk.malformed)
                    return
            yield chunk
    except VaeClientError as exc:
        raise PartInputError(exc.message) from None
    except OSError as exc:
        raise PartInputError(f"{part.path}: {exc}") from None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MB; None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
