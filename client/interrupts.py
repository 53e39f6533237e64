"""Ctrl-C and SIGTERM during a long job, remembered as well as raised.

A signal handler's KeyboardInterrupt is lost when it fires inside a finalizer (`__del__`, such
as grpc's Channel.__del__ during garbage collection, drops every exception), and a job whose
interrupt was lost would go on to finish as if nothing had happened. So the handler also sets
a flag, and jobs check it at each commit and before they finish (`raise_if_interrupted`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_requested = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (main
    thread only; elsewhere the block changes nothing). A signal the process ignores (nohup,
    a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = {
        sig: signal.signal(sig, _interrupt)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a signal arrived under `handle_interrupts` (even one whose
    own KeyboardInterrupt was swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt
