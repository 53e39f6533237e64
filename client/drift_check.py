"""The drift of a file's rows against a model's reference, computed offline the way vae-server
computes it for its drift window (common/drift.py): `vae-client drift FILE`, a check of new
data before a model is deployed on it.

Rows are read in chunks and checked as `score` checks them (rows with a missing or non-finite
value or an unknown condition label are skipped and counted), then encoded to their posteriors
by the server's Encode RPC, or in this process from the exported scorer's posterior outputs
(LocalModelClient, the same numbers a server's window is fed). The reference and its null come
from the model's manifest. Each run of `window` consecutive encoded rows is one window with its
own KL (nats) and p-value; the whole file gets one too, from running moments of all its
(clipped) posteriors, so memory stays bounded: one window's rows and O(L²) sums.

p-values need a null for the number of rows, which exports store for 16..4096 rows. A whole
file of more than 4096 rows is tested against the 4096-row null: the null statistic falls as
windows grow (less sampling noise), so that p-value is, if anything, too large (conservative).
A last window shorter than `window` is tested at its own size (no p-value below 16 rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from vaeserve.client.columns import ColumnSelection
from vaeserve.client.conditions import condition_encoder
from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo
from vaeserve.client.readers import open_input
from vaeserve.client.results import DriftReport
from vaeserve.client.row_checks import RowChecks
from vaeserve.common.drift import DriftReference, DriftResult, DriftUnavailable
from vaeserve.common.gaussian import MomentSums, clip_posteriors
from vaeserve.common.manifest import Manifest, ManifestError


@dataclass
class DriftJob:
    """What `vae-client drift FILE` measures: the input, its columns, the model, the window
    size and the level at which a window counts as drifted."""

    input: str
    model: str | None = None
    window: int = 256
    alpha: float = 0.01
    columns: list[str] | None = None
    input_format: str | None = None
    condition_column: str | None = None
    batch_size: int = 4096

    def check(self) -> None:
        """VaeClientError for settings no run can use."""
        if self.window < 1 or self.batch_size < 1:
            raise VaeClientError("--window and --batch-size must be >= 1")
        if not 0 < self.alpha < 1:
            raise VaeClientError(f"alpha must be between 0 and 1, got {self.alpha}")


@dataclass
class WindowDrift:
    """One window of consecutive encoded rows: its number, input row numbers and drift."""

    index: int
    first_row: int
    last_row: int
    report: DriftReport


@dataclass
class FileDrift:
    """A file's drift: the whole file's, and how its windows went (`alpha`: the level a
    window counts as drifted at; `smallest`: the window with the smallest p-value)."""

    input: str
    window: int
    alpha: float
    total: DriftReport
    windows: int = 0
    drifted_windows: int = 0
    smallest: WindowDrift | None = None
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        """Whether the whole file's p-value is below alpha."""
        return self.total.drifted(self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        smallest = self.smallest
        return {
            "input": self.input,
            "window": self.window,
            "alpha": self.alpha,
            "file": self.total.to_dict(),
            "windows": self.windows,
            "drifted_windows": self.drifted_windows,
            "smallest_window": None
            if smallest is None
            else {
                "index": smallest.index,
                "first_row": smallest.first_row,
                "last_row": smallest.last_row,
                "rows": smallest.report.rows,
                "kl": smallest.report.kl,
                "p_value": smallest.report.p_value,
            },
            "skipped_rows": self.skipped,
            "notes": self.notes,
        }


def drift_reference(info: ModelInfo) -> DriftReference:
    """The model's drift reference from its manifest; FAILED_PRECONDITION without one."""
    try:
        return DriftReference.from_manifest(Manifest.from_dict(info.manifest))
    except DriftUnavailable:
        raise VaeClientError(
            f"model {info.name}:{info.version} was exported without a drift reference; "
            "re-export it with this version of vae-export",
            code=grpc.StatusCode.FAILED_PRECONDITION,
        ) from None
    except (ManifestError, KeyError, TypeError, ValueError) as exc:
        raise VaeClientError(
            f"model {info.name}:{info.version}: its manifest has no usable drift reference ({exc})",
            code=grpc.StatusCode.FAILED_PRECONDITION,
        ) from None


def report(info: ModelInfo, ref: DriftReference, result: DriftResult) -> DriftReport:
    """A DriftReport of a result against the model's reference."""
    return DriftReport(
        model=(info.name, info.version),
        rows=result.rows,
        kl=float(result.kl),
        kl_per_dim=np.asarray(result.kl_per_dim, np.float64),
        share_per_dim=np.asarray(result.share_per_dim, np.float64),
        p_value=result.p_value,
        reference_rows=ref.reference_rows,
        null_method=ref.method,
    )


def file_drift(
    client: Any,
    job: DriftJob,
    on_window: Callable[[WindowDrift], None] | None = None,
) -> FileDrift:
    """Measure a file's drift (see the module docstring). `client` is a VaeClient or a
    LocalModelClient; `on_window` hears of each window as it is measured."""
    job.check()
    info = client.model_info(job.model)
    ref = drift_reference(info)
    selection = ColumnSelection(
        columns=job.columns,
        condition_column=job.condition_column,
        feature_names=info.feature_names,
        expected_dim=info.input_dim,
    )
    reader = open_input(job.input, selection, fmt=job.input_format)
    whole = MomentSums(ref.gaussian.mean)
    pending = _Pending()
    out = FileDrift(job.input, job.window, job.alpha, total=_no_rows(info))

    def measure(mu: np.ndarray, logvar: np.ndarray, rows: np.ndarray) -> None:
        result = ref.measure(mu, logvar)
        w = WindowDrift(out.windows, int(rows[0]), int(rows[-1]), report(info, ref, result))
        out.windows += 1
        if w.report.drifted(job.alpha):
            out.drifted_windows += 1
        p = w.report.p_value
        best = None if out.smallest is None else out.smallest.report.p_value
        if p is not None and (best is None or p < best):
            out.smallest = w
        if on_window is not None:
            on_window(w)

    try:
        encode_condition = condition_encoder(info, job.condition_column)
        checks = RowChecks(reader.features, None, job.condition_column, encode_condition)
        for chunk in reader.chunks(job.batch_size):
            checked = checks.check(chunk)
            out.skipped += len(checked.rejects)
            sent = checked.sent
            if not len(sent):
                continue
            cond = checked.condition[sent] if checked.condition is not None else None
            enc = client.encode(chunk.rows[sent], model=(info.name, info.version), condition=cond)
            mu, logvar = clip_posteriors(enc.mu, enc.logvar, ref.gaussian, ref.clip_radius)
            whole.add(mu, logvar)
            pending.add(enc.mu, enc.logvar, chunk.row_numbers[sent])
            while pending.rows >= job.window:
                measure(*pending.take(job.window))
        if pending.rows:
            if pending.rows >= ref.min_rows or out.windows == 0:
                measure(*pending.take(pending.rows))
            else:
                out.notes.append(
                    f"the last {pending.rows} rows are fewer than {ref.min_rows} and make no "
                    "window of their own (they count in the whole file)"
                )
    finally:
        reader.close()
    if whole.rows == 0:
        raise VaeClientError(f"{job.input}: no row could be encoded ({out.skipped} skipped)")
    total = ref.evaluate(whole.gaussian(), whole.rows)
    if total.p_value is None and whole.rows > ref.max_rows:
        total = DriftResult(
            total.rows,
            total.kl,
            total.kl_per_dim,
            total.share_per_dim,
            float(ref.p_value(total.kl, ref.max_rows)),
        )
        out.notes.append(
            f"the file's p-value uses the null of {ref.max_rows} rows, the largest stored: "
            f"conservative for its {whole.rows:,} rows"
        )
    out.total = report(info, ref, total)
    return out


class _Pending:
    """Encoded rows not yet in a window: (mu, logvar, input row numbers) pieces."""

    def __init__(self) -> None:
        self.pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, mu: np.ndarray, logvar: np.ndarray, rows: np.ndarray) -> None:
        self.pieces.append((mu, logvar, rows))
        self.rows += len(rows)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first n rows, removed."""
        mu, logvar, rows = (np.concatenate(parts) for parts in zip(*self.pieces, strict=True))
        rest = (mu[n:], logvar[n:], rows[n:])
        self.pieces = [rest] if len(rest[2]) else []
        self.rows = len(rest[2])
        return mu[:n], logvar[:n], rows[:n]


def _no_rows(info: ModelInfo) -> DriftReport:
    return DriftReport((info.name, info.version), 0, 0.0, np.zeros(0), np.zeros(0), None)


def window_schema(latent_dim: int) -> pa.Schema:
    """The per-window table `vae-client drift --output` writes."""
    return pa.schema(
        [
            pa.field("window", pa.int64()),
            pa.field("first_row", pa.int64()),
            pa.field("last_row", pa.int64()),
            pa.field("rows", pa.int64()),
            pa.field("kl", pa.float64()),
            pa.field("p_value", pa.float64()),
            pa.field("drifted", pa.bool_()),
            *(pa.field(f"kl_dim_{d}", pa.float64()) for d in range(latent_dim)),
            *(pa.field(f"share_dim_{d}", pa.float64()) for d in range(latent_dim)),
        ]
    )


def window_table(w: WindowDrift, alpha: float, schema: pa.Schema) -> pa.Table:
    """One window as a row of `window_schema`."""
    r = w.report
    values: dict[str, Any] = {
        "window": w.index,
        "first_row": w.first_row,
        "last_row": w.last_row,
        "rows": r.rows,
        "kl": r.kl,
        "p_value": r.p_value,
        "drifted": r.drifted(alpha),
    }
    for d, (kl, share) in enumerate(zip(r.kl_per_dim, r.share_per_dim, strict=True)):
        values[f"kl_dim_{d}"] = float(kl)
        values[f"share_dim_{d}"] = float(share)
    return pa.Table.from_pylist([values], schema=schema)
