"""Checks shared by every way of giving a storage an option (keyword, URI, config).

Each raises one ValueError naming the option and the value, so a mistake is caught
where the storage is opened, before anything is connected to or written.
"""

from __future__ import annotations

import math
import os

__all__ = ["MAX_WAIT", "check_wait", "check_path"]

#: The longest lock wait atoll accepts, in seconds (one day): a longer one is a
#: mistake, and PostgreSQL's lock_timeout cannot hold much more (24.8 days).
MAX_WAIT = 86400.0


def check_wait(name: str, value: object, *, allow_zero: bool = True) -> float:
    """``value`` as seconds to wait for a lock; ValueError unless it is a finite
    number from 0 (above 0 if not ``allow_zero``) to :data:`MAX_WAIT`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    seconds = float(value)
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not (math.isfinite(seconds) and low_ok and seconds <= MAX_WAIT):
        low = "0" if allow_zero else "more than 0"
        raise ValueError(f"{name} must be a number of seconds from {low} to {MAX_WAIT:g} (one day), not {value!r}")
    return seconds


def check_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a str; ValueError for a path no file system accepts (a NUL byte)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError(f"a database path must be a str, not bytes: {text!r}")
    if "\0" in text:
        raise ValueError(f"database path {text!r} contains a NUL byte; no file can have that name")
    if not text:
        raise ValueError("database path is empty")
    return text
