"""The one reachability walk: what every pack, of one database or of a collection, keeps.

Packing is mark and sweep over :class:`~atoll.storage.base.PackSession` objects, one
per storage, so the same code packs memory, SQLite and PostgreSQL storages and any
mix of them:

1. *Mark*, while commits go on. The roots are each database's root object and every
   object with a revision after the pack time (a commit after the pack time may have
   linked an object that was unreachable at it). From them the walk follows every
   reference, across databases, reading states a few thousand at a time
   (:meth:`PackSession.states`, one query each).
2. *Lock* every storage, in ``sort_key()`` order (the order commits lock them in,
   so a pack and a commit cannot deadlock), and mark from what was committed during
   step 1 (:meth:`PackSession.new_revisions`): nothing written before the lock is
   missed, and nothing is written after it until the sweep ends.
3. *Sweep* each storage: old revisions go, and the objects no mark reached that have
   no revision after the pack time.

Marks are kept in a :class:`MarkSet`, a bitmap in pages of 65,536 oids (oids are
dense integers), so marking 10 million objects takes a few MiB, not the gigabyte a
Python set of 10 million oids would; the walk's to-do list is an array of 8-byte
integers. References are read by :func:`scan_references`: a byte scan for records
that refer only within their own database (most of them), and
:func:`atoll.serialize.references`, which never imports an application class, for
the others.
"""

from __future__ import annotations

import contextlib
import re
from array import array
from typing import Iterable, Iterator, Mapping

from atoll.ids import u64
from atoll.progress import ProgressStep
from atoll.serialize import references as record_references
from atoll.storage.base import PackSession, PackStats, Progress, References, Storage

__all__ = ["MarkSet", "Marker", "pack_storages", "pack_storage", "scan_references", "BATCH"]

#: Oids per :meth:`PackSession.states` call.
BATCH = 2000
#: Report marking progress about every this many objects.
REPORT_EVERY = 50_000

_PAGE_SHIFT = 16
_PAGE_MASK = (1 << _PAGE_SHIFT) - 1
_PAGE_BYTES = 1 << (_PAGE_SHIFT - 3)


#: Opcodes of an 8-byte value in a pickle (protocol 2 and later), before its length
#: byte 8: SHORT_BINBYTES ``C``, SHORT_BINSTRING ``U``; and BINBYTES ``B``, whose
#: length takes four bytes (``08 00 00 00``).
_SHORT_EIGHT = (ord("C"), ord("U"))
_LONG_EIGHT = ord("B")

#: A reference to another database is a list of two: the string "m" or "n" (or "w",
#: a weak reference, which may name one) and a tuple. A pickler writes such a list
#: as EMPTY_LIST, maybe a memo put, MARK, then the string in full or, when the same
#: string came earlier in the record, as a memo get. Any list that starts so is
#: taken for one (a list of two or more items whose first is a one-letter string or
#: anything memoized).
_OTHER_DATABASE = re.compile(rb"\](?:q.|r.{4}|\x94)?\((?:X\x01\x00\x00\x00[mnw]|\x8c\x01[mnw]|h.|j.{4})", re.S)


def scan_references(record: bytes) -> list[tuple[str | None, bytes]]:
    """The references of ``record`` as :func:`atoll.serialize.references` gives them,
    or more: what pack must keep, fast.

    A reference within the database pickles its oid as an 8-byte value (or, when
    the same oid came earlier in the record, as a memo reference to that earlier
    value). So every 8-byte value of a binary pickle is taken as a reference: a
    superset of the real ones, found by one regular-expression scan in C (about 30
    times faster than unpickling). An 8-byte value that is not an oid only keeps
    an object that would otherwise go, never the other way round. Records that may
    refer to another database, or that are not binary pickles, are read in full,
    so that each oid is marked in the right database.
    """
    if record[:1] != b"\x80" or _OTHER_DATABASE.search(record) is not None:
        return record_references(record)
    # Every byte 8 is looked at (bytes.find runs in C), so none is hidden by
    # payload bytes that happen to look like an opcode before it.
    found: list[tuple[str | None, bytes]] = []
    find = record.find
    at = find(b"\x08", 1)
    while at > 0:
        opcode = record[at - 1]
        if opcode in _SHORT_EIGHT:
            oid = record[at + 1 : at + 9]
        elif opcode == _LONG_EIGHT and record[at + 1 : at + 4] == b"\x00\x00\x00":
            oid = record[at + 4 : at + 12]
        else:
            oid = b""
        if len(oid) == 8:
            found.append((None, oid))
        at = find(b"\x08", at + 1)
    return found


class MarkSet:
    """A set of non-negative integer oids, as a bitmap in pages of 65,536 bits
    (8 KiB), made only where some oid falls: compact for dense oids, bounded for
    sparse ones.

    >>> marks = MarkSet()
    >>> marks.add(5), marks.add(5), marks.add(70_000)
    (True, False, True)
    >>> 5 in marks, 6 in marks, len(marks), sorted(marks)
    (True, False, 2, [5, 70000])
    """

    __slots__ = ("_pages", "_count")

    def __init__(self, oids: Iterable[int] = ()) -> None:
        self._pages: dict[int, bytearray] = {}
        self._count = 0
        for oid in oids:
            self.add(oid)

    def add(self, oid: int) -> bool:
        """Mark ``oid``; True if it was not marked before."""
        page = self._pages.get(oid >> _PAGE_SHIFT)
        if page is None:
            page = self._pages[oid >> _PAGE_SHIFT] = bytearray(_PAGE_BYTES)
        at = (oid & _PAGE_MASK) >> 3
        bit = 1 << (oid & 7)
        byte = page[at]
        if byte & bit:
            return False
        page[at] = byte | bit
        self._count += 1
        return True

    def __contains__(self, oid: object) -> bool:
        if not isinstance(oid, int):
            return False
        page = self._pages.get(oid >> _PAGE_SHIFT)
        return page is not None and bool(page[(oid & _PAGE_MASK) >> 3] & (1 << (oid & 7)))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        for number in sorted(self._pages):
            page, base = self._pages[number], number << _PAGE_SHIFT
            for at, byte in enumerate(page):
                if byte:
                    for bit in range(8):
                        if byte & (1 << bit):
                            yield base + (at << 3) + bit

    def nbytes(self) -> int:
        """Bytes of bitmap held."""
        return len(self._pages) * _PAGE_BYTES


class Marker:
    """Marks what is reachable in several databases, following references across them.

    ``sessions`` maps each database name (as references name it) to its pack
    session. A reference to a database not in ``sessions`` is counted in
    ``outside`` and not followed (its database is not being packed).
    """

    def __init__(
        self,
        sessions: Mapping[str, PackSession],
        references: References = scan_references,
        progress: Progress | None = None,
    ) -> None:
        self.sessions = dict(sessions)
        self.references = references
        self.marks = {name: MarkSet() for name in sessions}
        self._todo = {name: array("Q") for name in sessions}
        self.outside: dict[str, int] = {}  # references to databases not packed: name -> count
        self.followed = 0  # records whose references were read
        self._progress = progress
        self._reported = 0

    def mark(self, database: str, oid: int) -> None:
        """Mark one object (and remember to follow its references)."""
        if self.marks[database].add(oid):
            self._todo[database].append(oid)

    def follow(self, database: str, record: bytes) -> None:
        """Mark every object ``record`` (of ``database``) refers to."""
        if not record:
            return  # DELETED (an undone creation) refers to nothing
        self.followed += 1
        marks, todo = self.marks, self._todo
        for name, ref in self.references(record):
            target = database if name is None else name
            found = marks.get(target)
            if found is None:
                self.outside[target] = self.outside.get(target, 0) + 1
                continue
            oid = u64(ref)
            if found.add(oid):
                todo[target].append(oid)

    def roots(self) -> None:
        """Mark each database's root and what was committed since the last call."""
        for name, session in self.sessions.items():
            self.mark(name, 0)
            for oid, record in session.new_revisions():
                self.mark(name, oid)
                self.follow(name, record)

    def walk(self) -> None:
        """Follow the to-do lists until every marked object's references are marked."""
        busy = True
        while busy:
            busy = False
            for name, todo in self._todo.items():
                session = self.sessions[name]
                while todo:
                    busy = True
                    batch = todo[-BATCH:].tolist()
                    del todo[-BATCH:]  # from the end: deleting from the front would move the rest
                    for _, record in session.states(batch):
                        self.follow(name, record)
                    self._report()

    def _report(self) -> None:
        if self._progress is None:
            return
        marked = sum(len(m) for m in self.marks.values())
        if marked >= self._reported + REPORT_EVERY:
            self._reported = marked
            self._progress(_step("marking", marked, "objects reachable"))

    def total(self) -> int:
        """Objects marked so far, in every database."""
        return sum(len(m) for m in self.marks.values())


def _step(phase: str, done: int, unit: str, text: str | None = None, finished: bool = False) -> ProgressStep:
    """One progress report: a line of text that carries its counts."""
    return ProgressStep(phase, done, None, unit, finished, text)


def pack_storages(
    storages: Mapping[str, Storage],
    pack_tid: bytes,
    *,
    collect: bool = True,
    references: References = scan_references,
    progress: Progress | None = None,
    vacuum: bool = True,
) -> dict[str, PackStats]:
    """Pack every storage of ``storages`` (database name -> storage) as of ``pack_tid``.

    With ``collect``, objects reachable from no root of these databases (following
    references across them) are removed too; the caller makes sure no database outside
    ``storages`` refers to them. Without it only old revisions go. ``references``
    reads a record's references (tests hand their own record format). With
    ``vacuum``, each storage gives the freed space back afterwards
    (:meth:`Storage.vacuum`). Returns :class:`PackStats` per database name.
    """
    with contextlib.ExitStack() as stack:
        sessions: dict[str, PackSession] = {}
        for name, storage in storages.items():
            session = storage.pack_session(pack_tid)
            stack.callback(session.close)
            sessions[name] = session
        marker = Marker(sessions, references, progress) if collect else None
        if marker is not None:
            marker.roots()
            marker.walk()
        for name in sorted(sessions, key=lambda n: storages[n].sort_key()):
            sessions[name].lock()
        if marker is not None:
            marker.roots()  # what was committed while the walk ran
            marker.walk()
            if progress is not None:
                total = marker.total()
                progress(_step("marking", total, "objects reachable", f"marked {total:,} reachable objects", True))
        result = {}
        for name, session in sessions.items():
            if progress is not None:
                progress(_step("sweeping", 0, "objects removed", f"sweeping {name}"))
            keep = marker.marks[name] if marker is not None else None
            stats = result[name] = session.sweep(keep)  # releases this storage's lock
            if progress is not None:
                storage_name = storages[name].name
                progress(stats.step(f"{name} ({storage_name})" if name else storage_name))
        stack.close()
        if vacuum:
            # Only once every lock is released: a commit holding one storage's lock
            # may be waiting for another's, and vacuuming takes the first.
            for name, stats in result.items():
                stats.size_after = storages[name].vacuum()
        return result


def pack_storage(
    storage: Storage,
    pack_tid: bytes,
    *,
    collect: bool = True,
    references: References = scan_references,
    progress: Progress | None = None,
    vacuum: bool = True,
) -> PackStats:
    """:func:`pack_storages` for one storage on its own."""
    return pack_storages(
        {"": storage}, pack_tid, collect=collect, references=references, progress=progress, vacuum=vacuum
    )[""]

