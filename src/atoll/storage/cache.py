"""A process-wide cache of records, shared by all views of one storage.

A connection's own cache forgets objects when it is emptied or when another
connection is opened; this cache keeps their records, so reading them again costs a
dictionary lookup instead of a query. It is what lets a warm process read from a
server-backed storage at memory speed. (An SQLite storage keeps none unless asked:
its file is cached already, and filling this cache costs every cold load; see
:mod:`atoll.storage.sqlite`.) A cache of ``max_bytes=0`` keeps nothing and costs
almost nothing.

Correctness rests on one tid, ``tid`` (C): every entry is the revision of its oid
current as of C. Such an entry, written at ``serial``, is also current for any
snapshot S with ``serial <= S <= C`` (nothing replaced it up to C). To move C
forward, the storage reports every oid changed between C and the new tid
(:meth:`advance`). A view's poll leaves its own commits out, so commits made
through this process's views are reported as they finish (:meth:`committed`):
their oids are dropped at once, because until C passes their tid a reader at C may
put back the revision the commit replaced, which is current at C but not after.
The commit's records are kept aside, and when C passes their tid each one enters
the cache as its oid's current revision, unless another process changed that oid
meanwhile: so what a process has just written is read back warm, as RelStorage's
cache does.
A record loaded from the database enters the cache only if it was read at
snapshot C exactly (:meth:`put`), so a slow reader cannot store a stale revision
after C moved on.

Memory layout. Records are copied into large segments (``bytearray`` blocks)
rather than kept as small ``bytes`` objects: thousands of small long-lived objects
would sit among the application's objects in the allocator's pools, spreading them
over more memory and slowing every later access to them (by a fifth, measured on
hot reads of 100,000 objects). A hit returns a fresh copy, freed once unpickled;
segments are frozen into ``bytes`` once read from (see :data:`FREEZE_BYTES`).
When the segments exceed ``max_bytes`` the oldest segment goes with all its entries
(first in, first out, by segment).
"""

from __future__ import annotations

import threading
from typing import Iterable, Tuple

__all__ = ["RecordCache", "FREEZE_BYTES"]


#: A segment read from once it holds this much is frozen (turned into ``bytes``) and
#: a new one started. A hit in a frozen segment is one slice, a single allocation of
#: the record's size; a hit in a ``bytearray`` is a slice and a copy, whose transient
#: allocations left the objects a warm read builds scattered in memory (cachegrind:
#: 5x the L1 misses of the same loop after reads served by SQLite).
FREEZE_BYTES = 64 << 10

# An entry is a plain tuple (segment number, offset, length, serial): a NamedTuple's
# constructor is a Python call, and a cold read makes one entry per object.
_Entry = Tuple[int, int, int, bytes]


class RecordCache:
    """Records current as of one tid; see the module docstring."""

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self.max_bytes = max_bytes
        self.tid: bytes | None = None  # C: entries are current as of this tid
        self._lock = threading.Lock()
        self._entries: dict[bytes, _Entry] = {}
        # Segments by number, oldest first; records are appended to the newest.
        self._segment_size = max(1, min(1 << 20, max_bytes // 16))
        self._segments: dict[int, bytearray | bytes] = {}  # bytes once frozen
        self._bytes = 0  # the segments' total length
        self._segment_oids: dict[int, list[bytes]] = {}  # oids written into each segment
        self._newest = -1
        # tid -> records (oid -> data, None for forget only) of this process's
        # commits that C has not passed
        self._own: dict[bytes, dict[bytes, bytes | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self, entry: _Entry) -> tuple[bytes, bytes]:
        number, offset, length, serial = entry
        segment = self._segments[number]
        if isinstance(segment, bytearray):
            if len(segment) < FREEZE_BYTES:
                return bytes(segment[offset : offset + length]), serial
            segment = self._segments[number] = bytes(segment)  # frozen: see FREEZE_BYTES
        return segment[offset : offset + length], serial

    def get(self, oid: bytes, snapshot: bytes) -> tuple[bytes, bytes] | None:
        """``(data, serial)`` of ``oid`` as of ``snapshot``, if cached."""
        with self._lock:
            entry = self._entries.get(oid)
            tid = self.tid
            if entry is None or tid is None or not entry[3] <= snapshot <= tid:
                self.misses += 1
                return None
            self.hits += 1
            return self._read(entry)

    def get_many(self, oids: Iterable[bytes], snapshot: bytes) -> tuple[dict[bytes, tuple[bytes, bytes]], list[bytes]]:
        """The cached records of ``oids`` as of ``snapshot``, and the oids missing."""
        found: dict[bytes, tuple[bytes, bytes]] = {}
        if not self.max_bytes:  # a cache of no bytes: nothing to look up
            missing = list(oids)
            self.misses += len(missing)
            return found, missing
        missing = []
        with self._lock:
            tid, entries = self.tid, self._entries
            usable = tid is not None and snapshot <= tid
            for oid in oids:
                entry = entries.get(oid) if usable else None
                if entry is not None and entry[3] <= snapshot:
                    found[oid] = self._read(entry)
                else:
                    missing.append(oid)
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def put(self, oid: bytes, data: bytes, serial: bytes, snapshot: bytes) -> None:
        """Remember a record that was read at ``snapshot``; ignored unless that is C."""
        self.put_many({oid: (data, serial)}, snapshot)

    def put_many(self, records: dict[bytes, tuple[bytes, bytes]], snapshot: bytes) -> None:
        """:meth:`put` for several records read at one snapshot (one loop: a cold
        read puts every record it loads)."""
        if not self.max_bytes:
            return
        with self._lock:
            if snapshot == self.tid:
                self._install(records)

    def _install(self, records: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Copy records (oid -> (data, serial)) current as of C into the segments."""
        if records:
            entries, largest, segment_size = self._entries, self.max_bytes // 4, self._segment_size
            number = self._newest
            segment = self._segments.get(number)
            if type(segment) is not bytearray:
                segment, number = self._new_segment()
            numbered = self._segment_oids[number]
            added = 0
            for oid, (data, serial) in records.items():
                size = len(data)
                if size > largest:
                    entries.pop(oid, None)  # too big to be worth its room
                    continue
                offset = len(segment)
                if offset + size > segment_size and offset > 0:
                    segment, number = self._new_segment()
                    numbered, offset = self._segment_oids[number], 0
                entries[oid] = (number, offset, size, serial)
                segment += data
                numbered.append(oid)
                added += size
            self._bytes += added
            self._evict()

    def _new_segment(self) -> tuple[bytearray, int]:
        self._newest += 1
        segment = self._segments[self._newest] = bytearray()
        self._segment_oids[self._newest] = []
        return segment, self._newest

    def _evict(self) -> None:
        entries = self._entries
        while self._bytes > self.max_bytes and self._segments:
            oldest = next(iter(self._segments))
            self._bytes -= len(self._segments.pop(oldest))
            for oid in self._segment_oids.pop(oldest):
                entry = entries.get(oid)
                if entry is not None and entry[0] == oldest:
                    del entries[oid]

    def advance(self, start: bytes, end: bytes, changed: set[bytes] | None) -> None:
        """A view saw the oids changed by others between ``start`` and ``end``.

        Moves C to ``end`` when that report covers everything after C (``start``
        is not after C); None for ``changed`` means unknown, and empties the cache.
        """
        with self._lock:
            if changed is None or (self.tid is not None and end > self.tid and start > self.tid):
                changed = None  # unknown changes, or a gap after C we know nothing about
                self._clear()
            else:
                self._drop(changed)
            if self.tid is None or end > self.tid:
                self.tid = end
                passed = sorted(t for t in self._own if t <= end)
                for tid in passed:
                    records = self._own.pop(tid)
                    self._drop(records)
                    if changed is not None:
                        # Current as of C unless another process wrote them after us.
                        self._install(
                            {oid: (data, tid) for oid, data in records.items() if data is not None and oid not in changed}
                        )

    def invalidate(self, oids: Iterable[bytes], tid: bytes) -> None:
        """Forget these oids, which a commit of this process wrote at ``tid``."""
        self.committed(dict.fromkeys(oids), tid)

    def committed(self, records: dict[bytes, bytes | None], tid: bytes) -> None:
        """A commit of this process wrote ``records`` (oid -> data) at ``tid``: forget
        the revisions they replace now, and cache these once C reaches ``tid`` (see
        the module docstring); a record whose data is None is only forgotten."""
        if not self.max_bytes:  # nothing was ever kept
            return
        with self._lock:
            self._drop(records)
            if self.tid is not None and tid > self.tid:
                self._own[tid] = records

    def clear(self) -> None:
        """Forget everything (after pack, or when the storage closes)."""
        with self._lock:
            self._clear()

    def _drop(self, oids: Iterable[bytes]) -> None:
        if not self._entries:  # an empty cache, or one of no bytes: nothing to find
            return
        pop = self._entries.pop
        for oid in oids:
            pop(oid, None)

    def _clear(self) -> None:
        # Commits not yet reached are still dropped when C passes them, but no
        # longer installed: whatever emptied the cache (a pack) may have removed them.
        self._own = {tid: dict.fromkeys(records) for tid, records in self._own.items()}
        self._entries.clear()
        self._segments.clear()
        self._segment_oids.clear()
        self._bytes = 0
