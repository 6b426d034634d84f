"""Checks of the arguments users pass to ``DB`` and ``Connection``.

A bad argument must fail at once with one line naming it and what is expected,
before anything happens: a cache size of ``"big"`` would otherwise fail much later,
inside the object cache, and a negative ``days`` would pack as of a future moment
and remove history still needed. Every check returns the value it accepted.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["check_oid", "check_count", "check_seconds", "pack_time"]


def check_oid(oid: Any, name: str = "oid") -> bytes:
    """``oid`` if it is an 8-byte oid; else TypeError or ValueError saying so."""
    if not isinstance(oid, bytes):
        raise TypeError(f"{name} must be 8 bytes (like b'\\x00' * 8 for the root), not {type(oid).__name__} {oid!r}")
    if len(oid) != 8:
        raise ValueError(f"{name} must be 8 bytes long, not {len(oid)}: {oid!r}")
    return oid


def check_count(value: Any, name: str, minimum: int = 0) -> int:
    """``value`` if it is an integer of at least ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value}")
    return value


def check_seconds(value: Any, name: str) -> float:
    """``value`` if it is a finite or infinite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__} {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value}")
    return value


def pack_time(t: Any, days: Any) -> float:
    """The POSIX time a pack removes history before: ``t`` (default now) minus
    ``days``. A moment in the future is refused: packing there would remove
    revisions that snapshots taken now still read."""
    now = time.time()
    if t is None:
        t = now
    elif isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise TypeError(f"pack time t must be POSIX seconds (like time.time()), or None for now; not {t!r}")
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days):
        raise TypeError(f"pack days must be a number of days, not {days!r}")
    if days < 0:
        raise ValueError(f"pack days must be >= 0 (days before t to keep history for), not {days}")
    when = t - days * 86400
    if when > now:
        raise ValueError(
            f"cannot pack as of a future moment ({when - now:.0f} s from now): give t <= time.time()"
        )
    return when
