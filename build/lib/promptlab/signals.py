"""SIGINT/SIGTERM as an exception: a run that is asked to stop records ``interrupted`` and exits 128 + signal.

Python's defaults are not enough: SIGTERM kills the process without running ``finally`` blocks (the record
stays ``running``), and a ``KeyboardInterrupt`` is caught by Lightning, which turns it into ``exit(1)`` and
ignores every later Ctrl-C. ``Interrupted`` derives from ``BaseException`` (not ``KeyboardInterrupt``), so
neither Lightning nor any ``except Exception`` on the way swallows it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal: 130, 143

    def __str__(self) -> str:
        return self.name


class _State:
    depth = 0  # > 0: inside deferred(); a signal waits until the block ends
    pending: int | None = None


def _handler(signum: int, frame: object) -> None:
    if _State.depth and _State.pending is None:  # a second signal does not wait: Ctrl-C twice stops now
        _State.pending = signum
        return
    raise Interrupted(signum)


@contextmanager
def handling() -> Iterator[None]:
    """Inside the block, SIGINT/SIGTERM raise ``Interrupted``; the previous handlers come back after it (so
    ``run()`` called from a notebook or pytest leaves their Ctrl-C alone). Nests. Outside the main thread,
    where Python cannot set handlers (a launcher running jobs in threads), it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    for signum in HANDLED:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal arriving inside the block is raised when it ends: a record write is never cut in half.

    Only the main thread defers (signal handlers run there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and (signum := take_pending()) is not None:
            raise Interrupted(signum)


def take_pending() -> int | None:
    """The signal that arrived inside ``deferred()`` and is still waiting (then no longer), else None: lets a
    block end early at a safe point (training saves a checkpoint at the end of the step, then stops)."""
    signum, _State.pending = _State.pending, None
    return signum


def signal_of(err: BaseException) -> int | None:
    """The signal behind an exception that means "stop" (ours, Ctrl-C without our handler, Lightning's
    SIGTERMException), else None."""
    if isinstance(err, Interrupted):
        return err.signum
    if isinstance(err, KeyboardInterrupt):
        return int(signal.SIGINT)
    if type(err).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions; not imported here
        return int(signal.SIGTERM)
    return None
