"""Checks of input rows before they are sent: every feature value finite and, for conditional
models, a known class label. Rows that fail are not sent; each becomes a reject with its reason,
as does every line the reader could not parse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeserve.client.batches import Batch
from vaeserve.client.conditions import ConditionEncoder
from vaeserve.client.readers import InputChunk
from vaeserve.client.rejects import RejectRow


@dataclass
class CheckedChunk:
    """An input chunk split into the rows to send and the rejects found before sending."""

    chunk: InputChunk
    valid: np.ndarray  # mask of the rows to send
    condition: np.ndarray | None  # one-hot condition of every row, for conditional models
    ids: list[Any] | None  # every row's id when the input has an id column
    rejects: list[RejectRow]  # malformed lines and rows not sent

    @property
    def sent(self) -> np.ndarray:
        """Positions in the chunk of the rows to send."""
        return np.flatnonzero(self.valid)

    def batch(self) -> Batch:
        """The Batch of the rows to send, ids being their input row numbers."""
        chunk = self.chunk
        if self.valid.all():  # contiguous row numbers: send the first, not all of them
            return Batch(rows=chunk.rows, condition=self.condition, start=chunk.start)
        keep = self.sent
        return Batch(
            rows=chunk.rows[keep],
            row_ids=chunk.row_numbers[keep],
            condition=None if self.condition is None else self.condition[keep],
        )

    def reject_sent(self, reason: str) -> list[RejectRow]:
        """The rows that were sent, as rejects for one reason (the server refused them)."""
        return [self.reject(int(i), reason) for i in self.sent]

    def reject(self, i: int, reason: str) -> RejectRow:
        """Row i of the chunk as a reject, with its row number and id."""
        return (int(self.chunk.start + i), None if self.ids is None else self.ids[i], reason)


@dataclass
class RowChecks:
    """What makes a row scorable: finite `features` and, with `encode_condition`, a known label
    in `condition_column`; `id_column` names each reject."""

    features: Sequence[str]
    id_column: str | None = None
    condition_column: str | None = None
    encode_condition: ConditionEncoder | None = None

    def check(self, chunk: InputChunk) -> CheckedChunk:
        """Split a chunk into rows to send and rejects (malformed lines first, then rows)."""
        valid = np.isfinite(chunk.rows).all(axis=1)
        condition = known = None
        if self.encode_condition is not None and chunk.aux is not None:
            condition, known = self.encode_condition(chunk.aux)
            valid &= known
        ids = None
        if self.id_column and chunk.aux is not None:
            ids = chunk.aux.column(self.id_column).to_pylist()
        checked = CheckedChunk(chunk, valid, condition, ids, [])
        checked.rejects = [(None, None, m.reason) for m in chunk.malformed]
        bad = np.flatnonzero(~valid)
        if len(bad):
            finite = np.isfinite(chunk.rows[bad]).all(axis=1)
            reasons = iter(self._value_reasons(chunk.rows[bad[~finite]]))
            label_reason = (
                f"unknown condition label in column {self.condition_column!r}"
                if known is not None
                else ""
            )
            for i, ok_values in zip(bad, finite, strict=True):
                reason = label_reason if ok_values else next(reasons)
                checked.rejects.append(checked.reject(int(i), reason))
        return checked

    def _value_reasons(self, rows: np.ndarray) -> list[str]:
        """Why each row cannot be scored: its first non-finite value."""
        reasons = []
        finite = np.isfinite(rows)
        for i in range(len(rows)):
            j = int(np.argmin(finite[i]))
            value = rows[i, j]
            what = "missing or NaN" if np.isnan(value) else f"non-finite ({value})"
            reasons.append(f"{what} value in column {self.features[j]!r}")
        return reasons
