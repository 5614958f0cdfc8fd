"""Stop requests: SIGINT / SIGTERM set a flag that the run checks at safe points.

A signal handler that raises can fire anywhere, including inside a weakref callback or a
garbage-collection finalizer, where Python prints "Exception ignored in ..." and carries on: the
run would swallow the interrupt and train to the end. Here the handler only records the signal;
:func:`check` raises :class:`~flcore.errors.RunInterrupted` from ordinary code at the safe points
the run passes often: before every round, after every round's records and checkpoint, before every
local epoch of every client (:class:`flcore.local.LocalEpochs`) and while an executor waits for its
workers. The trainer then checkpoints the last completed round and stops.

    with stop_on_signals():      # the trainer's fit
        ...
        check()                  # at a safe point
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from flcore.errors import RunInterrupted

__all__ = ["stop_on_signals", "check", "requested", "request"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: int | None = None


def requested() -> int | None:
    """The signal number of the pending stop request, or ``None``."""
    return _requested


def request(signum: int) -> None:
    """Record a stop request (the signal handler; also callable directly). Only the first counts."""
    global _requested
    if _requested is None:
        _requested = signum


def check() -> None:
    """Raise :class:`~flcore.errors.RunInterrupted` if a stop was requested.

    Raises:
        RunInterrupted: naming the signal (``signum`` holds its number).
    """
    if _requested is not None:
        raise RunInterrupted(_requested, f"interrupted by {signal.Signals(_requested).name}")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT and SIGTERM request a stop (:func:`request`) instead of raising; the
    previous handlers are restored and any request cleared on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    previous = {sig: signal.signal(sig, lambda signum, frame: request(signum)) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested = None
