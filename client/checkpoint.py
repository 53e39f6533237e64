"""The checkpoint of a resumable job: its committed progress, kept next to the output
(`OUT.progress.json`) and replaced atomically after every committed chunk.

It records what must not change before a resume (the job's fingerprint), the input rows and
malformed CSV lines done, the byte lengths of the output and rejects files to truncate back to,
and the counts so far.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from vaeserve.client.errors import VaeClientError

CHECKPOINT_VERSION = 1


@dataclass(kw_only=True)
class ScoreCounts:
    """Input rows a score job has settled: scored (`anomalies` of them flagged) or rejected."""

    scored: int = 0
    anomalies: int = 0
    rejected: int = 0

    def set_counts(self, other: ScoreCounts) -> None:
        """Take another's counts."""
        self.scored, self.anomalies, self.rejected = other.scored, other.anomalies, other.rejected


def checkpoint_path(output: str) -> str:
    """The sidecar file where a job records its committed progress."""
    return f"{output}.progress.json"


@dataclass
class Checkpoint(ScoreCounts):
    """Committed progress of a job; `job` is the fingerprint a resumed run must match."""

    job: dict[str, Any]
    rows_done: int = 0
    malformed_done: int = 0
    output_bytes: int = 0
    rejects_bytes: int = 0
    version: int = CHECKPOINT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        """Read a checkpoint; VaeClientError when it is unreadable or of another version."""
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("version") != CHECKPOINT_VERSION:
                raise VaeClientError(f"{path}: checkpoint version {data.get('version')} is unknown")
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise VaeClientError(
                f"{path}: the checkpoint is unreadable ({exc}); start over with --overwrite"
            ) from None

    def save(self, path: str) -> None:
        """Replace the checkpoint file with this one, atomically."""
        _write_checkpoint(path, self)

    def changed(self, fingerprint: dict[str, Any]) -> list[str]:
        """The fingerprint keys whose values differ from the checkpoint's job (a key only one
        of them has differs too)."""
        keys = sorted(set(self.job) | set(fingerprint))
        return [k for k in keys if self.job.get(k) != fingerprint.get(k)]


def _write_checkpoint(path: str, ckpt: Checkpoint) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(ckpt), f)
    os.replace(tmp, path)
