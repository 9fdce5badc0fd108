"""Ctrl-C that stops a long loop at a safe point instead of inside Dr.Jit.

A KeyboardInterrupt raised while Dr.Jit traces or runs a kernel (`dr.while_loop` in Mitsuba's
integrators) is caught there, printed as a traceback and re-raised as a RuntimeError, so the user
sees two tracebacks and the command cannot tell an interruption from a failure. Inside `deferred()`
the first Ctrl-C only sets a flag; the optimisation loops call `raise_if_requested()` once per
iteration, which raises KeyboardInterrupt between two renders. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()


def _handler(signum: int, frame: object) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt  # the second Ctrl-C: stop now
    _requested.set()


@contextmanager
def deferred() -> Iterator[None]:
    """Defer Ctrl-C to the next `raise_if_requested()` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def request() -> None:
    """Ask the next `raise_if_requested()` to raise: a signal handler that raises KeyboardInterrupt
    at once calls this too, because an exception raised while Python runs a finaliser (`__del__`,
    a weakref callback, garbage collection) is printed and dropped, and the loop would go on."""
    _requested.set()


def clear() -> None:
    """Forget an interruption requested earlier."""
    _requested.clear()


def raise_if_requested() -> None:
    """Raise KeyboardInterrupt when Ctrl-C was pressed inside `deferred()`."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt
