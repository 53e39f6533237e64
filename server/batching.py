"""Dynamic batching: concurrent requests for one graph merged into one onnxruntime call.

Requests queue per (graph, key); a worker takes the oldest, waits up to `max_delay_s` for more
until `max_rows` rows are queued, concatenates the inputs along each input's batch axis, runs
the graph once in a thread and splits the outputs (batch axis 0) back to the callers. While a
call runs, new requests queue up, so under load calls merge even with a zero delay. A request
whose caller went away (cancelled, deadline passed) before its call starts is dropped.
An optional BatchObserver hears of every graph call: its rows, merged requests, how long each
request queued and how long the call took (the server's Prometheus metrics use it). A request
made inside a traced call carries that call's span record; a graph call with such requests
times its onnxruntime run and reports both to server/tracing.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vaeserve.server import tracing
from vaeserve.server.sessions import GraphRunner

log = logging.getLogger(__name__)

INLINE_MAX_ROWS = 64  # CPU calls this small run inline on the event loop (see _inline)


@dataclass
class BatcherStats:
    """Counters for tests and logs: requests in, graph calls made, requests dropped."""

    requests: int = 0
    calls: int = 0
    rows: int = 0
    dropped: int = 0
    max_merged: int = 0


class BatchObserver(Protocol):
    """Told about each graph call a batcher makes (called on the event loop; must not block)."""

    def __call__(
        self, rows: int, requests: int, queue_waits: Sequence[float], run_seconds: float
    ) -> None:
        """rows and requests merged into one call, each request's queue wait, the call's time."""


@dataclass
class _Item:
    feeds: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future = field(repr=False)
    release: bool = False  # free the graph's spare memory after the call
    queued_at: float = field(default_factory=time.perf_counter)
    trace: Any = None  # the caller's span record (server/tracing.py); None: not traced


class _Lane:
    """Queue and worker for one key of one graph; the worker runs only while work is queued."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows  # most rows merged into one call of this lane
        self.pending: collections.deque[_Item] = collections.deque()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task | None = None


class DynamicBatcher:
    """Merges concurrent `run` calls on one graph; all methods run on the server's event loop."""

    def __init__(
        self,
        runner: GraphRunner,
        executor: Executor,
        max_rows: int,
        max_delay_s: float,
        batch_axes: Mapping[str, int] | None = None,
        empty_outputs: Mapping[str, tuple[int, ...]] | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """`batch_axes`: input name -> axis holding rows (default 0); outputs use axis 0.

        `empty_outputs`: output name -> shape without the batch axis, for zero-row requests
        (answered without calling the graph). `observer` hears of every graph call.
        """
        self.runner = runner
        self.executor = executor
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.batch_axes = dict(batch_axes or {})
        self.empty_outputs = dict(empty_outputs or {})
        self.observer = observer
        self.stats = BatcherStats()
        self._lanes: dict[Hashable, _Lane] = {}

    async def run(
        self,
        feeds: Mapping[str, np.ndarray],
        rows: int,
        key: Hashable = None,
        max_rows: int | None = None,
        release: bool = False,
    ) -> dict[str, np.ndarray]:
        """Queue one request of `rows` rows; returns this request's slice of the outputs.

        Requests with different `key` (e.g. a different number of importance samples) are
        never merged. `max_rows` caps the rows merged into one call for this key (below the
        batcher's own max_rows; every request of a key must give the same cap). With
        `release`, the graph frees its spare memory after the call (the end of a large request).
        """
        self.stats.requests += 1
        if rows == 0 and self.empty_outputs:
            return {k: np.zeros((0, *shape), np.float32) for k, shape in self.empty_outputs.items()}
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is None:
            cap = self.max_rows if max_rows is None else min(self.max_rows, max_rows)
            lane = self._lanes[key] = _Lane(max(1, cap))
        item = _Item(feeds, rows, loop.create_future(), release=release, trace=tracing.current())
        # a caller that goes away wakes the worker so it can drop the request at once
        item.future.add_done_callback(lambda _: lane.wakeup.set())
        lane.pending.append(item)
        lane.wakeup.set()
        if lane.worker is None or lane.worker.done():
            # an empty context: the worker serves many callers, so it must not carry the
            # first caller's context variables (its request id) into its log lines
            lane.worker = contextvars.Context().run(
                loop.create_task, self._work(key, lane), name=f"batch-{self.runner.name}"
            )
        return await item.future

    async def _work(self, key: Hashable, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.pending:
                batch = await self._collect(lane, loop)
                if batch:
                    await self._run_batch(batch, loop)
        finally:
            if lane.pending:  # cancelled with work queued: fail it rather than hang callers
                for item in lane.pending:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("batcher stopped"))
                lane.pending.clear()
            if self._lanes.get(key) is lane and not lane.pending:
                del self._lanes[key]

    async def _collect(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Take queued items up to max_rows, waiting up to max_delay_s for the batch to fill."""
        deadline = loop.time() + self.max_delay_s
        while True:
            self._drop_cancelled(lane)
            queued = sum(i.rows for i in lane.pending)
            if not lane.pending or queued >= lane.max_rows:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            lane.wakeup.clear()
            try:
                await asyncio.wait_for(lane.wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Item] = []
        rows = 0
        while lane.pending:
            item = lane.pending[0]
            if batch and rows + item.rows > lane.max_rows:
                break
            lane.pending.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    def _drop_cancelled(self, lane: _Lane) -> None:
        if any(i.future.done() for i in lane.pending):
            keep = [i for i in lane.pending if not i.future.done()]
            self.stats.dropped += len(lane.pending) - len(keep)
            lane.pending = collections.deque(keep)

    def _inline(self, rows: int, feeds: Mapping[str, np.ndarray]) -> bool:
        """Tiny CPU calls (tens of microseconds) run on the event loop: the hop to the
        thread pool would cost more than the call (about 0.1 ms of one-row Encode latency)."""
        return self.runner.device == "cpu" and rows <= INLINE_MAX_ROWS and "noise" not in feeds

    def _merge(self, batch: list[_Item]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return {k: np.ascontiguousarray(v) for k, v in batch[0].feeds.items()}
        return {
            k: np.concatenate([i.feeds[k] for i in batch], axis=self.batch_axes.get(k, 0))
            for k in batch[0].feeds
        }

    async def _run_batch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        batch = [i for i in batch if not i.future.done()]
        if not batch:
            return
        feeds = self._merge(batch)
        self.stats.calls += 1
        rows = sum(i.rows for i in batch)
        self.stats.rows += rows
        self.stats.max_merged = max(self.stats.max_merged, len(batch))
        run = self.runner.run
        if any(i.release for i in batch):
            run = functools.partial(self.runner.run, shrink=True)
        traced = any(i.trace is not None for i in batch)
        timing = [0, 0]  # the onnxruntime run's start and end (time_ns), when traced
        if traced:
            run = functools.partial(_timed, run, timing)
        started = time.perf_counter()
        try:
            if self._inline(rows, feeds):
                outputs = run(feeds)
            else:
                outputs = await loop.run_in_executor(self.executor, run, feeds)
            if self.observer is not None:
                try:
                    self.observer(
                        rows,
                        len(batch),
                        [started - i.queued_at for i in batch],
                        time.perf_counter() - started,
                    )
                except Exception:  # metrics must never fail a request
                    log.exception("batch observer failed")
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            if traced:
                tracing.record_batch(
                    self.runner.name, self.runner.device, batch, started, timing, exc
                )
            if len(batch) > 1:  # one request must not fail the others: retry them one by one
                log.warning(
                    "graph %s failed on %d merged requests (%s); retrying them singly",
                    self.runner.name,
                    len(batch),
                    exc,
                )
                for item in batch:
                    await self._run_batch([item], loop)
                return
            log.error("graph %s failed: %s", self.runner.name, exc)
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        if traced:
            tracing.record_batch(self.runner.name, self.runner.device, batch, started, timing)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        bounds = np.cumsum([i.rows for i in batch])[:-1]
        split = {k: np.split(v, bounds, axis=0) for k, v in outputs.items()}
        for n, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result({k: parts[n] for k, parts in split.items()})


def _timed(
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    timing: list[int],
    feeds: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """`run(feeds)`, noting its start and end (time_ns) in `timing` for its span."""
    timing[0] = time.time_ns()
    try:
        return run(feeds)
    finally:
        timing[1] = time.time_ns()
