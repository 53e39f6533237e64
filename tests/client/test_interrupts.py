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
    before = signal.getsignal(sig)
    signal.signal(sig, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    with handle_interrupts():
        raise_if_interrupted()  # nothing pending
        threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
        obj = _Finalizer()
        del obj  # its __del__ swallows the KeyboardInterrupt
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(sig) is signal.default_int_handler  # restored
    signal.signal(sig, before)


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, a background job
    try:
        with handle_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            raise_if_interrupted()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_each_block_starts_clean() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with handle_interrupts(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
    with handle_interrupts():
        raise_if_interrupted()  # the earlier block's signal is forgotten
    assert signal.getsignal(signal.SIGTERM) is before
