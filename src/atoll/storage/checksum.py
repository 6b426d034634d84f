"""Record checksums: how a storage notices that a record's bytes changed on disk.

Every revision a storage writes is stored with :func:`checksum`, a CRC-32 of its
data whose initial value is the low 32 bits of ``oid XOR tid``, so a damaged record
fails the check, and so (but for one pair in 2**32) does a record whose oid or tid
column changed. One C call per record: the seed costs no second pass. Loads compare it (:func:`check`) and raise
:class:`~atoll.errors.CorruptRecordError` on a mismatch instead of handing damaged
bytes to the unpickler. CRC-32 finds every single-bit flip and every burst up to 32
bits, and costs about a tenth of a microsecond for a record of a few hundred bytes
(``zlib.crc32`` runs in C at gigabytes per second). It guards against decay, not
against an attacker, who could recompute it.

The value is a signed 32-bit integer (the unsigned CRC minus 2**31), so that every
SQL integer type holds it. A revision written before checksums existed has none
(NULL) and is returned unchecked.
"""

from __future__ import annotations

import struct
import zlib

from atoll.errors import CorruptRecordError

__all__ = ["checksum", "check", "UNCHECKED"]

_crc32 = zlib.crc32  # masks its initial value to 32 bits

#: What a revision written before checksums existed holds.
UNCHECKED = None

_OFFSET = 1 << 31


def checksum(zoid: int, tid: int, data: bytes | None) -> int:
    """The checksum stored with revision ``tid`` of oid ``zoid`` (both as integers)."""
    return _crc32(data or b"", zoid ^ tid) - _OFFSET


def check(database: str, zoid: int, tid: int, data: bytes | None, stored: int | None) -> None:
    """Raise CorruptRecordError unless ``data`` matches ``stored`` (None: unchecked)."""
    if stored is not None and (
        not isinstance(data, (bytes, type(None))) or _crc32(data or b"", zoid ^ tid) - _OFFSET != stored
    ):
        raise damaged(database, zoid, tid)


def damaged(database: str, zoid: int, tid: int | None, detail: str = "its bytes do not match the checksum stored with it") -> CorruptRecordError:
    """The error for a damaged revision."""
    return CorruptRecordError(database, _oid(zoid), _oid(tid) if tid is not None else None, detail)


def _oid(value: int) -> bytes:
    try:
        return struct.pack(">Q", value)
    except struct.error:  # a damaged integer column
        return struct.pack(">Q", value & (2**64 - 1))
