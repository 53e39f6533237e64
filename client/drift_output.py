"""How `vae-client drift` shows drift: a text summary of a file's drift (client/drift_check.py)
or of a server's window (VaeClient.drift), and the per-window table it writes with --output."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from vaeserve.client.drift_check import FileDrift, WindowDrift, window_schema, window_table
from vaeserve.client.results import DriftReport
from vaeserve.client.writers import detect_output_format, open_writer

DRIFT_OUTPUT_FORMATS = ("csv", "parquet", "jsonl")
TOP_DIMS = 3  # latent dimensions named in a summary


@contextmanager
def window_writer(
    path: str | None, fmt: str | None, latent_dim: int, alpha: float
) -> Iterator[Callable[[WindowDrift], None] | None]:
    """A callback that writes each window as a row of `path` (None without a path); the
    file is complete when the block ends without an error, and removed when it fails."""
    if not path:
        yield None
        return
    schema = window_schema(latent_dim)
    writer = open_writer(path, detect_output_format(path, fmt, DRIFT_OUTPUT_FORMATS), schema)
    try:
        yield lambda w: writer.write(window_table(w, alpha, schema))
    except BaseException:
        writer.abort()
        raise
    writer.finish()


def _p(value: float | None) -> str:
    return "none (fewer than 16 rows)" if value is None else f"{value:.4g}"


def _dims(report: DriftReport) -> str:
    """The latent dimensions that moved most, by their share of the marginal KLs."""
    share = report.share_per_dim
    if not len(share) or not np.any(share > 0):
        return "-"
    order = np.argsort(-share, kind="stable")[:TOP_DIMS]
    return ", ".join(f"z{d} {share[d]:.0%}" for d in order)


def _model(report: DriftReport) -> str:
    name, version = report.model
    return (
        f"{name}:{version} (reference: {report.reference_rows:,} validation rows, "
        f"{report.null_method} null)"
    )


def format_file(result: FileDrift) -> str:
    """A file's drift as a few lines of text."""
    total = result.total
    lines = [
        f"model        {_model(total)}",
        f"rows         {total.rows:,} encoded, {result.skipped:,} skipped, from {result.input}",
        f"file         KL {total.kl:.4g} nats, p-value {_p(total.p_value)}",
        f"windows      {result.windows:,} of up to {result.window:,} rows, "
        f"{result.drifted_windows:,} with p < {result.alpha:g}",
    ]
    if result.smallest is not None:
        w = result.smallest
        lines.append(
            f"smallest p   {_p(w.report.p_value)} (window {w.index}, rows "
            f"{w.first_row:,}..{w.last_row:,}, KL {w.report.kl:.4g} nats)"
        )
    lines.append(f"latent dims  {_dims(total)} of the file's marginal KL")
    lines += [f"note         {n}" for n in result.notes]
    return "\n".join(lines)


def format_window(reading: DriftReport) -> str:
    """A server's drift window as a few lines of text."""
    when = datetime.datetime.fromtimestamp(reading.evaluated_at, datetime.timezone.utc)
    return "\n".join(
        [
            f"model        {_model(reading)}",
            f"window       {reading.rows:,} of {reading.window_rows:,} rows "
            f"({reading.rows_seen:,} scored since load), evaluated {when:%Y-%m-%dT%H:%M:%SZ}",
            f"drift        KL {reading.kl:.4g} nats, p-value {_p(reading.p_value)}",
            f"latent dims  {_dims(reading)} of the window's marginal KL",
        ]
    )
