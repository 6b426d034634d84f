"""Object ids and transaction ids: the constants and helpers every layer shares.

An oid is 8 bytes, big-endian, so that byte order equals numeric order. Oid 0
is the root object of every database.

A tid is an 8-byte ZODB timestamp (``persistent.TimeStamp``): the UTC time of the
commit at a resolution of about 1/4 microsecond. Tids of one storage strictly
increase; :func:`new_tid` guarantees that even when the clock steps back.
"""

from __future__ import annotations

import datetime
import struct
import time

from persistent.timestamp import TimeStamp

#: Eight zero bytes: the "no revision" serial of a new object and the root's oid.
z64 = b"\0" * 8
ROOT_OID = z64

_packer = struct.Struct(">Q")


def p64(value: int) -> bytes:
    """An unsigned integer as 8 big-endian bytes (an oid or tid)."""
    return _packer.pack(value)


def u64(value: bytes) -> int:
    """8 big-endian bytes (an oid or tid) as an unsigned integer."""
    return _packer.unpack(value)[0]


def oid_repr(oid: bytes) -> str:
    """A short readable form of an oid: ``0x2a``."""
    if isinstance(oid, bytes) and len(oid) == 8:
        return hex(u64(oid))
    return repr(oid)


def tid_repr(tid: bytes | None) -> str:
    """A readable form of a tid: its hex value and UTC time."""
    if not isinstance(tid, bytes) or len(tid) != 8:
        return repr(tid)
    if tid == z64:
        return "0x00"
    return f"{hex(u64(tid))} ({TimeStamp(tid)})"


def new_tid(previous: bytes | None = None) -> bytes:
    """A tid for the current time, strictly later than ``previous``."""
    now = time.time()
    stamp = TimeStamp(*time.gmtime(now)[:5], now % 60)
    if previous is not None and previous != z64:
        stamp = stamp.laterThan(TimeStamp(previous))
    return stamp.raw()


def tid_from_time(when: float | datetime.datetime) -> bytes:
    """The tid of a moment: POSIX seconds, or a datetime (naive means UTC)."""
    if isinstance(when, datetime.datetime):
        if when.tzinfo is not None:
            when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        seconds = when.second + when.microsecond / 1e6
        return TimeStamp(when.year, when.month, when.day, when.hour, when.minute, seconds).raw()
    return TimeStamp(*time.gmtime(when)[:5], when % 60).raw()


def tid_time(tid: bytes) -> float:
    """The POSIX time a tid stands for."""
    return TimeStamp(tid).timeTime()


def next_tid(tid: bytes) -> bytes:
    """The smallest tid after ``tid`` (used to turn "at" into "before")."""
    return p64(u64(tid) + 1)
