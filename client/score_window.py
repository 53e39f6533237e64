"""ScoreWindow: the Score requests sent on a stream but not yet answered.

The window is bounded (the producer blocks while it is full, so memory stays bounded however
long the input is) and replayable: when a stream drops, a new stream's request iterator starts
again from the oldest unanswered request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from vaeserve.client.errors import VaeClientError
from vaeserve.proto.vae.v1 import vae_pb2


class ScoreWindow:
    """Score requests sent but not yet answered: bounded, and replayable on a new stream."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = max(1, limit)
        self._requests_by_seq: dict[int, vae_pb2.ScoreRequest] = {}
        self._next = 0
        self._done = 0
        self._closed = False
        self._aborted = False
        self._generation = 0

    def put(self, request: vae_pb2.ScoreRequest) -> bool:
        """Add a request, blocking while the window is full; False once aborted."""
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or self._next - self._done < self._limit)
            if self._aborted:
                return False
            self._requests_by_seq[self._next] = request
            self._next += 1
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """No more requests will be added."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Wake and stop every waiter (the producer and any request iterator)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def answered(self) -> None:
        """The oldest unanswered request got its response."""
        with self._cond:
            if self._done >= self._next:
                raise VaeClientError("the server answered more Score requests than were sent")
            del self._requests_by_seq[self._done]
            self._done += 1
            self._cond.notify_all()

    @property
    def unanswered(self) -> int:
        """Requests sent (or queued) but not answered."""
        with self._cond:
            return self._next - self._done

    @property
    def finished(self) -> bool:
        """Closed and every request answered."""
        with self._cond:
            return self._closed and self._done == self._next

    def stream(self, model: vae_pb2.ModelRef) -> Iterator[vae_pb2.ScoreRequest]:
        """A request iterator for a new stream: unanswered requests first, then new ones."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()  # an older stream's iterator sees it is stale and ends
            return self._requests(self._generation, self._done, model)

    def _requests(
        self, generation: int, seq: int, model: vae_pb2.ModelRef
    ) -> Iterator[vae_pb2.ScoreRequest]:
        first = True
        while True:
            with self._cond:
                while not (
                    self._aborted
                    or self._generation != generation
                    or seq < self._next
                    or self._closed
                ):
                    self._cond.wait()
                if self._aborted or self._generation != generation or seq >= self._next:
                    return
                request = self._requests_by_seq[seq]
            seq += 1
            if first:  # the model may only be named on a stream's first message
                first = False
                request = _with_model(request, model)
            yield request


def _with_model(request: vae_pb2.ScoreRequest, model: vae_pb2.ModelRef) -> vae_pb2.ScoreRequest:
    copy = vae_pb2.ScoreRequest()
    copy.CopyFrom(request)
    copy.model.CopyFrom(model)
    return copy
