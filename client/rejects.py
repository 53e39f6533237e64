"""The rejects file: every input row that was not scored, with the reason, as CSV
(row, id, reason). It is created on the first reject and resumable by its committed length."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from vaeserve.client.errors import VaeClientError

REJECT_COLUMNS = ("row", "id", "reason")
#: (input row number or None for a malformed line, the row's id or None, why it was rejected)
RejectRow = tuple[int | None, Any, str]


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


def by_row(rejects: list[RejectRow]) -> list[RejectRow]:
    """Rejects in input order, malformed lines (no row number) first."""
    return sorted(rejects, key=lambda r: -1 if r[0] is None else r[0])


class RejectsFile:
    """The rejects CSV: opened on the first reject, or reopened and truncated to resume."""

    def __init__(self, path: str, resume_at: int = 0) -> None:
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

    def write(self, rows: list[RejectRow]) -> None:
        """Append rejects (the header comes with the first)."""
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
        """Flush and return the length a resumed run truncates to (0 before any reject)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        """Close the file (if a reject opened it)."""
        if self._file is not None:
            self._file.close()
