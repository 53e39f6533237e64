"""ScoreStream: one bidirectional Score call over an iterable of batches.

A feeder thread turns input batches into requests (split to fit the request limits) and puts
them in a bounded ScoreWindow; the caller's thread reads the answers, merges the parts of each
batch and yields one ScoreResult per batch in input order. When the stream drops with
UNAVAILABLE it reconnects (as the retry policy allows) and resends only the unanswered
requests, so every batch is answered exactly once.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from vaeserve.client.arrays import RequestLimits, read_tensor, spans
from vaeserve.client.batches import Batch, coerce_batch
from vaeserve.client.channel import Metadata, RetryPolicy
from vaeserve.client.errors import VaeClientError
from vaeserve.client.results import Explanation, ScoreResult
from vaeserve.client.score_window import ScoreWindow
from vaeserve.common.scores import KIND_NAMES, SCORE_KINDS
from vaeserve.common.tensors import is_set, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

#: Name of the thread that pulls input batches (it may block on a slow source).
FEEDER_THREAD = "vae-score-feeder"


def score_request_template(
    *,
    score: str | None = None,
    threshold: float | None = None,
    include_kl_per_dim: bool = False,
    iw_samples: int = 0,
    seed: int = 0,
    explain: int = 0,
) -> vae_pb2.ScoreRequest:
    """The fields every request of one stream shares; VaeClientError for an unknown score or
    a negative count."""
    if score is not None and score not in SCORE_KINDS:
        raise VaeClientError(f"score must be one of {sorted(SCORE_KINDS)}, got {score!r}")
    if explain < 0 or iw_samples < 0:
        raise VaeClientError(f"explain and iw_samples must be >= 0, got {explain}, {iw_samples}")
    template = vae_pb2.ScoreRequest(
        include_kl_per_dim=include_kl_per_dim,
        score=SCORE_KINDS[score] if score else vae_pb2.SCORE_KIND_UNSPECIFIED,
        iw_samples=iw_samples,
        seed=seed,
        explain=explain,
    )
    if threshold is not None:
        template.threshold = threshold
    return template


@dataclass
class PendingBatch:
    """An input batch split into `chunks` requests; `parts` collects their answers in order."""

    index: int
    chunks: int
    rows: int
    parts: list[vae_pb2.ScoreResponse] = field(default_factory=list)

    def part_id(self, part: int) -> str:
        """The batch_id of one part's request and answer ('3', or '3.1' for a split batch)."""
        return f"{self.index}" if self.chunks == 1 else f"{self.index}.{part}"


class ScoreStream:
    """One Score call: a feeder thread fills the window, `results` reads and merges answers.

    Use each instance for one iterable of batches.
    """

    def __init__(
        self,
        stub: vae_pb2_grpc.VaeServiceStub,
        retry: RetryPolicy,
        limits: RequestLimits,
        *,
        model: vae_pb2.ModelRef,
        template: vae_pb2.ScoreRequest,
        metadata: Metadata = (),
        columns: Sequence[str] | None = None,
        max_in_flight: int = 4,
        timeout: float | None = None,
        raise_errors: bool = True,
    ) -> None:
        self._stub = stub
        self._retry = retry
        self._limits = limits
        self._model = model
        self._template = template
        self._metadata = metadata
        self._columns = columns
        self._timeout = timeout
        self._raise_errors = raise_errors
        self._window = ScoreWindow(max_in_flight)
        self._pending: collections.deque[PendingBatch] = collections.deque()
        self._failures: list[BaseException] = []

    def results(self, batches: Iterable[Any]) -> Iterator[ScoreResult]:
        """Score the batches, yielding results in input order (see the module docstring)."""
        feeder = threading.Thread(
            target=self._feed, args=(batches,), name=FEEDER_THREAD, daemon=True
        )
        call = None
        try:
            feeder.start()
            attempt = 0
            while True:
                call = self._stub.Score(
                    self._window.stream(self._model),
                    timeout=self._timeout,
                    metadata=self._metadata,
                )
                try:
                    for reply in call:
                        attempt = 0
                        yield from self._empty_batches()
                        result = self._receive(reply)
                        if result is not None:
                            if result.error is not None and self._raise_errors:
                                raise result.error
                            yield result
                        yield from self._empty_batches()
                except grpc.RpcError as exc:
                    if self._retry.should_retry(exc, attempt) and not self._failures:
                        self._retry.wait(attempt)
                        attempt += 1
                        continue
                    raise VaeClientError.from_rpc_error(exc, "Score") from None
                break
            if self._failures:
                raise self._failures[0]
            if not self._window.finished:
                raise VaeClientError(
                    f"the server closed the Score stream with {self._window.unanswered} "
                    "batches unanswered",
                    code=grpc.StatusCode.UNAVAILABLE,
                )
            yield from self._empty_batches(final=True)
        finally:
            self._window.abort()
            if call is not None:
                call.cancel()
            feeder.join(timeout=1.0)

    def _feed(self, batches: Iterable[Any]) -> None:
        """Split each batch into requests and queue them in the window (the feeder thread)."""
        try:
            offset = 0
            for index, item in enumerate(batches):
                batch = coerce_batch(item, self._columns)
                n = len(batch.rows)
                if batch.start is not None:
                    offset = batch.start
                width = batch.rows.shape[1] + (2 if batch.row_ids is not None else 0)
                if batch.condition is not None:
                    width += batch.condition.shape[1]
                parts = spans(n, self._limits.rows_per_request(width)) if n else []
                pending = PendingBatch(index, len(parts), n)
                self._pending.append(pending)
                for j, (s, e) in enumerate(parts):
                    if not self._window.put(self._request(batch, pending.part_id(j), s, e, offset)):
                        return
                offset += n
        except BaseException as exc:  # re-raised in the consumer
            self._failures.append(exc)
        finally:
            self._window.close()

    def _request(
        self, batch: Batch, batch_id: str, s: int, e: int, offset: int
    ) -> vae_pb2.ScoreRequest:
        """The request for rows [s, e) of a batch whose first row id is `offset`."""
        request = vae_pb2.ScoreRequest()
        request.CopyFrom(self._template)
        request.batch_id = batch_id
        request.rows.CopyFrom(to_tensor(batch.rows[s:e]))
        if batch.row_ids is not None:
            request.row_ids.CopyFrom(to_tensor(batch.row_ids[s:e]))
        else:
            request.start_offset = offset + s
        if batch.condition is not None:
            request.condition.CopyFrom(to_tensor(batch.condition[s:e]))
        return request

    def _receive(self, reply: vae_pb2.ScoreResponse) -> ScoreResult | None:
        """Add an answer to the oldest pending batch; its result once every part is in."""
        if not self._pending:
            raise VaeClientError("the server answered a Score request never sent")
        head = self._pending[0]
        expected = head.part_id(len(head.parts))
        if reply.batch_id and reply.batch_id != expected:
            raise VaeClientError(
                f"Score answers are out of order: got batch {reply.batch_id!r} "
                f"while waiting for {expected!r}",
                code=grpc.StatusCode.INTERNAL,
            )
        self._window.answered()
        head.parts.append(reply)
        if len(head.parts) < head.chunks:
            return None
        self._pending.popleft()
        return merge_answers(head)

    def _empty_batches(self, final: bool = False) -> Iterator[ScoreResult]:
        """Results of empty batches at the head of the queue (they are never sent)."""
        while self._pending and self._pending[0].chunks == 0:
            yield merge_answers(self._pending.popleft())
        if final and self._pending:
            raise VaeClientError(f"{len(self._pending)} batches were never answered")


def merge_answers(pending: PendingBatch) -> ScoreResult:
    """One ScoreResult from the answers to the parts of one input batch."""
    if not pending.parts:
        return ScoreResult.empty(pending.index)
    first = pending.parts[0]
    model = (first.model.name, first.model.version)
    errors = [p for p in pending.parts if p.HasField("error") and p.error.code != 0]
    if errors:
        err = errors[0].error
        error = VaeClientError.from_status(err.code, err.message, f"batch {pending.index} rejected")
        return ScoreResult.empty(pending.index, rows=pending.rows, model=model, error=error)

    def cat(name: str, optional: bool = False) -> np.ndarray | None:
        tensors = [getattr(p, name) for p in pending.parts]
        if optional and not all(is_set(t) for t in tensors):
            return None
        return np.concatenate([read_tensor(t, name) for t in tensors])

    result = ScoreResult(
        index=pending.index,
        row_ids=cat("row_ids"),
        kl=cat("kl"),
        recon_nll=cat("recon_nll"),
        neg_elbo=cat("neg_elbo"),
        p_value=cat("p_value"),
        is_anomaly=cat("is_anomaly"),
        kl_per_dim=cat("kl_per_dim", optional=True),
        iw_nll=cat("iw_nll", optional=True),
        score=KIND_NAMES.get(first.score, ""),
        threshold=first.threshold,
        model=model,
        rows=pending.rows,
        explain=_explanation(cat),
    )
    if len(result.kl) != pending.rows:
        result.error = VaeClientError(
            f"batch {pending.index}: the server returned {len(result.kl)} scores "
            f"for {pending.rows} rows",
            code=grpc.StatusCode.INTERNAL,
        )
    return result


def _explanation(cat: Any) -> Explanation | None:
    """The explain_* tensors of a batch's answers (None when none was asked for)."""
    index = cat("explain_index", optional=True)
    if index is None:
        return None
    return Explanation(
        index=index,
        nll=cat("explain_nll"),
        excess=cat("explain_excess"),
        value=cat("explain_value"),
        reconstruction=cat("explain_reconstruction"),
    )
