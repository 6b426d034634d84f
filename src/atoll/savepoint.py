"""Savepoint storage: a transaction's saved changes wait for commit in a temporary file.

A savepoint writes the records of every object changed since the last one to a
:class:`SavepointStore` and marks those objects unchanged, so the connection's cache
may turn them into ghosts again: a long transaction (an import of a million objects
with a savepoint every ten thousand) keeps in memory only what changed since its last
savepoint, plus one index entry per saved object. A saved object touched again
reloads from the store; commit sends the store's records to the storage; rolling
back to a savepoint forgets the records written after it.

ZODB does the same with its ``TmpStore``. The file is anonymous (removed when
closed, or when the process ends); records are written back to back, each with a
header that points at the same object's previous record, so rolling back needs no
copy of the index per savepoint: the records after the savepoint's position are
read, each oid goes back along its chain to the newest record before that
position, and the file is cut there.
"""

from __future__ import annotations

import struct
import tempfile
from typing import Iterator

__all__ = ["SavepointStore", "NEW", "ADDED"]

#: Flag of a record: the object is new in this transaction (its read serial is z64).
NEW = 1
#: Flag of a record: the new object was placed with ``Connection.add``.
ADDED = 2

# previous record of the oid (-1: none), oid, read serial, flags, data length
_HEADER = struct.Struct(">q8s8sBI")
_FLAG_BITS = 2
_FLAG_MASK = (1 << _FLAG_BITS) - 1
_CHUNK = 1 << 22
_Z64 = b"\0" * 8  # bytes of records handed to the storage per store_many at commit


class SavepointStore:
    """The records a transaction saved at its savepoints, in an anonymous file.

    ``index`` maps each saved oid to its newest record's position and flags (one
    int: ``position << 2 | flags``), the only per-object memory the store keeps.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="atoll-savepoint-")
        self._end = 0
        self.index: dict[bytes, int] = {}

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def position(self) -> int:
        """Where the next record goes: a savepoint remembers it to roll back to."""
        return self._end

    def flags(self, oid: bytes) -> int:
        """The flags of ``oid``'s newest record (KeyError if none)."""
        return self.index[oid] & _FLAG_MASK

    def write(self, records: list[tuple[bytes, bytes, int, bytes]]) -> None:
        """Append ``(oid, read_serial, flags, data)`` records in one write."""
        index, end = self.index, self._end
        parts = []
        for oid, read_serial, flags, data in records:
            previous = index.get(oid)
            parts.append(_HEADER.pack(-1 if previous is None else previous >> _FLAG_BITS, oid, read_serial, flags, len(data)))
            parts.append(data)
            index[oid] = end << _FLAG_BITS | flags
            end += _HEADER.size + len(data)
        self._file.seek(self._end)
        self._file.write(b"".join(parts))
        self._end = end

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        """``(data, read_serial)`` of ``oid``'s newest record."""
        file = self._file
        file.seek(self.index[oid] >> _FLAG_BITS)
        _, _, read_serial, _, size = _HEADER.unpack(file.read(_HEADER.size))
        return file.read(size), read_serial

    def _headers(self, start: int) -> Iterator[tuple[int, int, bytes, bytes, int, int]]:
        """``(position, previous, oid, read_serial, flags, size)`` of each record from
        ``start`` on, in file order."""
        file, position = self._file, start
        file.flush()
        while position < self._end:
            file.seek(position)
            previous, oid, read_serial, flags, size = _HEADER.unpack(file.read(_HEADER.size))
            yield position, previous, oid, read_serial, flags, size
            position += _HEADER.size + size

    def rollback(self, position: int) -> list[tuple[bytes, bool, bool]]:
        """Forget the records written from ``position`` on.

        Returns ``(oid, kept, new)`` for each oid that had such records: ``kept``
        when an older record of it remains (its object reloads from there), ``new``
        when the object was new in this transaction at the first record forgotten
        (without ``kept``, it is then no longer part of the transaction)."""
        later: dict[bytes, tuple[int, int]] = {}
        for _, previous, oid, _, flags, _ in self._headers(position):
            later.setdefault(oid, (previous, flags))  # the first record after position
        changed = []
        for oid, (previous, flags) in later.items():
            if previous < 0:
                del self.index[oid]
                changed.append((oid, False, bool(flags & NEW)))
            else:
                self._file.seek(previous)
                older_flags = _HEADER.unpack(self._file.read(_HEADER.size))[3]
                self.index[oid] = previous << _FLAG_BITS | older_flags
                changed.append((oid, True, bool(flags & NEW)))
        self._file.truncate(position)
        self._end = position
        return changed

    def records(self, exclude: dict | set) -> Iterator[dict[bytes, tuple[bytes, bytes]]]:
        """The newest record of every saved oid not in ``exclude``, in batches of
        oid -> ``(read_serial, data)`` (for ``StorageView.store_many``).

        The batches share the index's oid objects and one ``z64`` for every new
        object: a storage that queues records until its vote keeps only the
        record bytes and a tuple per object."""
        file = self._file
        file.flush()
        batch: dict[bytes, tuple[bytes, bytes]] = {}
        size = 0
        for oid, packed in self.index.items():
            if oid in exclude:
                continue
            file.seek(packed >> _FLAG_BITS)
            _, _, read_serial, flags, length = _HEADER.unpack(file.read(_HEADER.size))
            batch[oid] = (_Z64 if flags & NEW else read_serial, file.read(length))
            size += length
            if size >= _CHUNK:
                yield batch
                batch, size = {}, 0
        if batch:
            yield batch

    def close(self) -> None:
        """Remove the file."""
        self._file.close()
        self.index = {}
