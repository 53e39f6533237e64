"""What a score job reports: its summary (counts, timing, where things went) and the
interruption that carries the summary so far."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from vaeserve.client.checkpoint import ScoreCounts
from vaeserve.client.errors import VaeClientError


@dataclass
class JobSummary(ScoreCounts):
    """What a job did: counts, timing and where things went."""

    input: str
    output: str
    model: str
    rows: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    resumed_at: int | None = None
    rejects: str | None = None
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: what was scored, then the counts, timing and outcome."""
        d = asdict(self)
        return {k: d.pop(k) for k in ("input", "output", "model", "rows")} | d

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


class JobInterrupted(VaeClientError):
    """The job was stopped (Ctrl-C, SIGTERM); what was committed can be resumed."""

    summary: JobSummary | None = None


def print_summary(summary: JobSummary, stream: TextIO | None = None) -> None:
    """Print the summary line to stderr."""
    print(summary.text(), file=stream or sys.stderr)
