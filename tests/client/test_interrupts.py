"""A signal during a job is remembered even when its KeyboardInterrupt is swallowed, as
Python does for one raised inside a finalizer (grpc's Channel.__del__ drops every exception)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time

import pytest

from vaeserve.client.interrupts import handle_interrupts, raise_if_interrupted


class _Finalizer:
    """An object whose __del__ runs while the signal arrives and drops what it raises."""

    def __del__(self) -> None:
        with contextlib.suppress(BaseException):
            time.sleep(1.0)  # the signal's handler runs in here


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_interrupt_is_still_raised_at_the_next_check(sig: signal.Signals) -> None:
    with handle_interrupts():
        raise_if_interrupted()  # nothing pending
        threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
        obj = _Finalizer()
        del obj  # its __del__ swallows the KeyboardInterrupt
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_each_block_starts_clean() -> None:
    with handle_interrupts(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
    with handle_interrupts():
        raise_if_interrupted()  # the earlier block's signal is forgotten
