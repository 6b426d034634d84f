"""Pausing Python's cyclic garbage collector while a commit serializes and finishes.

A commit allocates several container objects per object it writes (reference
tuples, store entries, rows), and almost all of them die by reference counting
before it ends. With the collector on, those allocations trigger collections, and
every full one walks the whole heap: the application's loaded objects included. On a
10,000-object commit that was 25 to 40% of the commit's time (measured on SQLite).
Pausing the collector for the commit's steps leaves the work to one young-generation
collection afterwards.

The pause is process-wide (the collector is), counted across threads, and restores
the collector only if it was on when the first pause began: an application that
turned it off keeps it off.

Because it is process-wide, a pause must never last through a wait: a thread that
waits for a lock (another commit's, another process's) would keep the collector off
for every thread of a server, for as long as commits overlap. So the connection
pauses only around serialization and its finish loop, never around a vote (which
waits for the storage's commit lock), and code that may wait inside a pause (a
storage reserving oids under its commit lock while a commit serializes) wraps the
wait in :func:`resumed` (a lock, with :func:`acquire`).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["paused", "resumed", "acquire"]

_lock = threading.Lock()
_depth = 0  # pauses in progress, over all threads
_was_enabled = False
_mine = threading.local()  # .depth: the pauses of this thread


def _pause(count: int) -> None:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += count


def _unpause(count: int) -> None:
    global _depth
    with _lock:
        _depth -= count
        if _depth == 0 and _was_enabled:
            gc.enable()


class _Paused:
    """The context manager :func:`paused` returns: a class, not a generator, since
    every commit enters it twice and a generator-based one cost more than the pause."""

    __slots__ = ()

    def __enter__(self) -> None:
        _pause(1)
        _mine.depth = getattr(_mine, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _mine.depth -= 1
        _unpause(1)


_PAUSED = _Paused()


def paused() -> _Paused:
    """Run the ``with`` block with the cyclic garbage collector off."""
    return _PAUSED


@contextmanager
def resumed() -> Iterator[None]:
    """Inside :func:`paused`, end this thread's pause for the ``with`` block (a wait);
    elsewhere, do nothing. The collector runs again unless another thread pauses it."""
    depth = getattr(_mine, "depth", 0)
    if not depth:
        yield
        return
    _mine.depth = 0
    _unpause(depth)
    try:
        yield
    finally:
        _pause(depth)
        _mine.depth = depth


def acquire(lock: threading.Lock | threading.RLock) -> None:
    """Take ``lock``; if that means waiting (inside :func:`paused`), wait with the
    collector resumed. The caller releases it."""
    if not lock.acquire(blocking=False):
        with resumed():
            lock.acquire()
