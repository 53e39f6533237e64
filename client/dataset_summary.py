"""What a dataset job reports: the single-file summary's counts and timing, plus its parts
(done now, done before, failed with why) and each worker's share (rows, rows/s, peak RSS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaeserve.client.dataset_output import PartResult
from vaeserve.client.errors import VaeClientError
from vaeserve.client.job_summary import JobSummary


@dataclass
class DatasetSummary(JobSummary):
    """A JobSummary over parts; `rows_per_s` counts the rows scored by this run only."""

    engine: str = "local"
    backend: str = ""
    files: int = 0
    parts: int = 0
    parts_done: int = 0  # committed, by this run or an earlier one
    parts_skipped: int = 0  # committed by an earlier run (or attempt)
    failed: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    driver_peak_rss_mb: float | None = None  # the process that ran the job (VmHWM)

    def add(self, result: PartResult) -> None:
        """Count one part's result."""
        if result.error is not None:
            self.failed.append({"part": result.name, "input": result.input, "error": result.error})
            return
        self.parts_done += 1
        self.parts_skipped += int(result.skipped)
        self.rows += result.rows
        self.scored += result.scored
        self.anomalies += result.anomalies
        self.rejected += result.rejected

    def set_workers(self, results: list[PartResult]) -> None:
        """Each worker's (node, pid) parts, rows, busy seconds, rows/s and peak RSS this run."""
        by_worker: dict[tuple[str, int], dict[str, Any]] = {}
        for r in results:
            if r.skipped or r.error is not None:
                continue
            w = by_worker.setdefault(
                (r.node, r.pid),
                {"node": r.node, "pid": r.pid, "parts": 0, "rows": 0, "busy_s": 0.0},
            )
            w["parts"] += 1
            w["rows"] += r.rows
            w["busy_s"] += r.seconds
            if r.peak_rss_mb is not None:
                w["peak_rss_mb"] = max(w.get("peak_rss_mb", 0.0), r.peak_rss_mb)
        for w in by_worker.values():
            w["busy_s"] = round(w["busy_s"], 3)
            w["rows_per_s"] = round(w["rows"] / w["busy_s"]) if w["busy_s"] > 0 else 0
        self.workers = sorted(by_worker.values(), key=lambda w: (w["node"], w["pid"]))

    def text(self) -> str:
        """A one-line human summary."""
        state = "done" if self.complete else "stopped"
        text = (
            f"{state}: {self.rows:,} rows in {self.parts_done:,} of {self.parts:,} parts "
            f"({self.files:,} files) with {self.model} ({self.backend}, engine {self.engine}): "
            f"{self.scored:,} scored, {self.anomalies:,} anomalies, {self.rejected:,} rejected; "
            f"{self.elapsed_s:.1f} s, {self.rows_per_s:,.0f} rows/s"
        )
        if self.parts_skipped:
            text += f" ({self.parts_skipped:,} parts were done before)"
        text += f" -> {self.output}"
        if self.rejected and self.rejects:
            text += f"; rejects in {self.rejects}"
        if self.failed:
            first = self.failed[0]
            text += (
                f"\n{len(self.failed):,} parts failed and were not written; the first: "
                f"{first['input']}: {first['error']}"
            )
        return text


class DatasetIncomplete(VaeClientError):
    """Some parts could not be scored (their input); the rest are committed. `summary` says
    which failed; fix or remove those inputs and rerun with --resume."""

    summary: DatasetSummary | None = None
