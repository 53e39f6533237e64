"""Arrays at the client's edges: callers' rows and conditions checked into float32 matrices,
split into requests that fit the limits, and response tensors read back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeserve.client.errors import VaeClientError
from vaeserve.common.tensors import TensorError, from_tensor
from vaeserve.proto.vae.v1 import vae_pb2

#: Requests are split to stay under gRPC's default 4 MiB receive limit on the server.
DEFAULT_REQUEST_BYTES = (4 << 20) - (64 << 10)
#: ... and under the server's default cap on rows per request (max_request_rows).
DEFAULT_REQUEST_ROWS = 4096


def as_rows(array: Any, what: str, width: int | None = None) -> np.ndarray:
    """A C-ordered float32 [n, width] matrix of a numeric array (one row when 1-D)."""
    rows = np.asarray(array)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise VaeClientError(f"{what} must be 2-D [n, features], got shape {list(rows.shape)}")
    if not (np.issubdtype(rows.dtype, np.number) or rows.dtype == np.bool_):
        raise VaeClientError(f"{what} must be numeric, got dtype {rows.dtype}")
    if width is not None and rows.shape[1] != width:
        raise VaeClientError(f"{what} has {rows.shape[1]} columns, expected {width}")
    return np.ascontiguousarray(rows, dtype=np.float32)


def broadcast_condition(condition: Any, n: int) -> np.ndarray | None:
    """A condition of 1 or n rows as n rows (None stays None)."""
    if condition is None:
        return None
    cond = as_rows(condition, "condition")
    if cond.shape[0] not in (1, n):
        raise VaeClientError(f"condition has {cond.shape[0]} rows, expected 1 or {n}")
    return np.broadcast_to(cond, (n, cond.shape[1])) if cond.shape[0] == 1 else cond


def read_tensor(tensor: vae_pb2.Tensor, what: str) -> np.ndarray:
    """A response tensor as an array; a malformed one is the server's fault."""
    try:
        return from_tensor(tensor, what)
    except TensorError as exc:
        raise VaeClientError(f"malformed response: {exc}") from None


def spans(n: int, step: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `step` rows covering n rows; one empty span when n is 0."""
    step = max(1, step)
    return [(s, min(n, s + step)) for s in range(0, n, step)] or [(0, 0)]


@dataclass
class RequestLimits:
    """How many rows one request may carry: under the request size, the server's row cap and,
    for answers, the largest message."""

    request_bytes: int = DEFAULT_REQUEST_BYTES
    max_request_rows: int = DEFAULT_REQUEST_ROWS
    max_message_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        self.request_bytes = max(1024, int(self.request_bytes))
        self.max_request_rows = max(1, int(self.max_request_rows))

    def rows_per_request(self, width: int) -> int:
        """Rows of `width` float32 values (4 bytes each) that fit one request."""
        return max(1, min(self.max_request_rows, self.request_bytes // max(1, 4 * width)))

    def rows_per_answer(self, answer_row_bytes: int) -> int:
        """Rows whose answer (`answer_row_bytes` each) fits one message, with 10% to spare."""
        return max(1, int(self.max_message_bytes * 0.9) // max(1, answer_row_bytes))
