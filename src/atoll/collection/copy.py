"""Copying a database, or a whole collection, transaction by transaction.

``copy(source, destination)`` writes every transaction of the source into an empty
destination, in order, each with its tid, user, description, extension and every
revision it wrote (a history-free source has only current revisions to give). Any
storage to any storage: memory, SQLite, PostgreSQL, and ZODB FileStorage files
(``Data.fs``) both ways, through ZODB's own FileStorage (the ``zodb`` extra).

Restartable: a destination that holds the first transactions of the source (a copy
that was interrupted) is continued from its last transaction instead of refused, so
running the same copy again finishes it. Source transactions are written in batches
of a few MiB through :meth:`Storage.restore_transactions` (SQLite writes a batch in
one write transaction, keeping each transaction's own row and tid), which leaves
whole transactions only when it is interrupted, so a restart never finds one in
part; memory holds one batch, however long the history.

A collection is copied database by database (``copy({"a": ..., "b": ...}, {"a":
..., "b": ...})``, or two ``.conf`` files); records name other databases by name, so
cross-database references stay intact when the names do.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generator, Iterator, Mapping, Protocol

from atoll.collection.targets import TargetError, is_config, open_storages
from atoll.ids import p64, u64, z64
from atoll.progress import Progress, Reporter
from atoll.storage.base import Storage, TransactionRecord
from atoll.storage.restore import BATCH_BYTES, BATCH_TRANSACTIONS

__all__ = ["copy", "CopyStats"]


@dataclass
class CopyStats:
    """What a copy wrote: transactions, revisions and ``size`` (bytes of record data); the tid
    after which it continued an interrupted copy (None for a fresh one); seconds."""

    transactions: int = 0
    records: int = 0
    size: int = 0
    resumed_after: bytes | None = None
    seconds: float = 0.0


def copy(source: Any, destination: Any, progress: Progress | None = None) -> CopyStats | dict[str, CopyStats]:
    """Copy ``source`` into ``destination`` (see the module docstring).

    Each end is a storage, a ``DB``, or anything :func:`atoll.open` accepts; a path
    ending in ``.fs`` is a ZODB FileStorage. Two collections (``databases`` dicts or
    ``.conf`` files with the same database names) are copied database by database,
    and the result is then a dict of stats by name.
    """
    if _is_collection(source) or _is_collection(destination):
        return _copy_collection(source, destination, progress)
    reader = _reader(source)
    try:
        writer = _writer(destination)
        try:
            return _copy_one(reader, writer, progress)
        finally:
            writer.close()
    finally:
        reader.close()


#: A batch of source transactions is written to the destination as one unit
#: (:meth:`Storage.restore_transactions`) once it holds BATCH_BYTES of records,
#: counting RECORD_COST more per record for the Python objects that hold it, or
#: BATCH_TRANSACTIONS transactions (the bounds in atoll.storage.restore).
RECORD_COST = 200

_data = attrgetter("data")


def _copy_one(reader: _Reader, writer: _Writer, progress: Progress | None) -> CopyStats:
    started = time.monotonic()
    stats = CopyStats()
    last = writer.last_transaction()
    start = None
    if last != z64:
        if not reader.has_transaction(last):
            raise TargetError(
                f"destination {writer.name} is not empty and is not an interrupted copy of {reader.name} "
                "(its last transaction is not in the source): copy into an empty database"
            )
        stats.resumed_after, start = last, p64(u64(last) + 1)
    packed = reader.last_pack()
    # Counting the source's transactions reads its whole log: only for a report.
    total = reader.count_after(start) if progress is not None else None
    report = Reporter(progress, f"copying {reader.name}", total=total, unit="transactions", every=10)
    direct = _direct(reader, writer, start)
    if direct is not None:  # the destination copies the source's rows itself
        with closing(direct):  # its lock and attached source are let go at once if progress raises
            for transactions, records, size in direct:
                stats.transactions += transactions
                stats.records += records
                stats.size += size
                report.advance(transactions)
        return _finished(reader, writer, stats, report, started, packed)
    batch: list[TransactionRecord] = []
    size = 0

    def flush() -> None:
        stats.size += writer.write_batch(batch)
        stats.transactions += len(batch)
        stats.records += sum(len(record.records) for record in batch)
        report.advance(len(batch))
        batch.clear()

    for record in reader.transactions(start):
        batch.append(record)
        size += sum(map(len, filter(None, map(_data, record.records)))) + RECORD_COST * len(record.records)
        if size >= BATCH_BYTES or len(batch) >= BATCH_TRANSACTIONS:
            flush()
            size = 0
    if batch:
        flush()
    return _finished(reader, writer, stats, report, started, packed)


def _direct(reader: _Reader, writer: _Writer, start: bytes | None) -> Generator[tuple[int, int, int], None, None] | None:
    """The batches a destination storage copies from the source storage itself
    (:meth:`Storage.restore_from`), or None: then the copy reads and writes."""
    if isinstance(reader, _StorageReader) and isinstance(writer, _StorageWriter):
        return writer.storage.restore_from(reader.storage, start)
    return None


def _finished(
    reader: _Reader, writer: _Writer, stats: CopyStats, report: Reporter, started: float, packed: bytes | None
) -> CopyStats:
    if reader.last_pack() != packed:
        # Batches before the pack kept revisions it removed, later ones miss some the
        # earlier kept: a history the source never had.
        raise TargetError(
            f"{reader.name} was packed while it was copied, so the copy in {writer.name} mixes its history "
            "from before and after the pack: copy it again into an empty database"
        )
    if packed is not None and packed != z64:  # undo must refuse there what it refuses here
        writer.note_pack(packed)
    writer.finish()
    stats.seconds = time.monotonic() - started
    report.done(
        f"copied {reader.name} into {writer.name}: {stats.transactions:,} transactions, "
        f"{stats.records:,} revisions, {stats.size:,} bytes in {stats.seconds:.1f} s"
    )
    return stats


def _is_collection(end: Any) -> bool:
    from atoll.db import DB

    if isinstance(end, Mapping):
        return True
    if isinstance(end, DB):
        return len(end.databases) > 1
    return is_config(end)


def _copy_collection(source: Any, destination: Any, progress: Progress | None) -> dict[str, CopyStats]:
    sources, close_sources = _ends(source, read_only=True)
    try:
        destinations, close_destinations = _ends(destination, read_only=False)
        try:
            if set(sources) != set(destinations):
                raise TargetError(
                    f"a collection is copied into one with the same database names: source has "
                    f"{sorted(sources)}, destination {sorted(destinations)}"
                )
            return {name: copy(sources[name], destinations[name], progress) for name in sorted(sources)}  # type: ignore[misc]
        finally:
            if close_destinations:
                for storage in destinations.values():
                    storage.close()
    finally:
        if close_sources:
            for storage in sources.values():
                storage.close()


def _ends(end: Any, read_only: bool) -> tuple[dict[str, Any], bool]:
    """Name -> one database's storage (or FileStorage path) of a collection given as
    a dict, DB or .conf, and whether they were opened here."""
    from atoll.db import DB

    if isinstance(end, DB):
        return {name: db.storage for name, db in end.databases.items()}, False
    if isinstance(end, Mapping):
        return {name: (db.storage if isinstance(db, DB) else db) for name, db in end.items()}, False
    if is_config(end):
        return open_storages(end, read_only=read_only, must_exist=not read_only)
    raise TargetError(f"{end!r} is one database: copy a collection into a collection")


# -- reading ---------------------------------------------------------------------------


class _Reader(Protocol):
    """A source of transactions, oldest first (a storage's, or a ZODB FileStorage's:
    :class:`atoll.collection.zodb.FileStorageReader`)."""

    name: str

    def transactions(self, start: bytes | None) -> Iterator[TransactionRecord]:
        raise NotImplementedError

    def has_transaction(self, tid: bytes) -> bool:
        return any(record.tid == tid for record in self.transactions(tid))

    def count_after(self, start: bytes | None) -> int | None:
        return None

    def last_pack(self) -> bytes | None:
        """The source's newest pack tid (``z64``: never packed; None: cannot tell)."""
        return None

    def close(self) -> None:
        pass


class _StorageReader(_Reader):
    def __init__(self, storage: Storage, opened_here: bool) -> None:
        self.storage, self._opened_here, self.name = storage, opened_here, storage.name

    def transactions(self, start: bytes | None) -> Iterator[TransactionRecord]:
        return self.storage.iterator(start)

    def has_transaction(self, tid: bytes) -> bool:
        return any(record.tid == tid for record in self.storage.iterator(tid, tid))

    def count_after(self, start: bytes | None) -> int | None:
        log = getattr(self.storage, "transaction_log", None)
        if log is None:
            return None
        count, before = 0, None
        while True:
            page = log(before, 1000)
            count += sum(1 for info in page if start is None or info.tid >= start)
            if len(page) < 1000 or (start is not None and page[-1].tid < start):
                return count
            before = page[-1].tid

    def last_pack(self) -> bytes | None:
        return self.storage.last_pack()

    def close(self) -> None:
        if self._opened_here:
            self.storage.close()


def _reader(source: Any) -> _Reader:
    if _is_filestorage(source):
        from atoll.collection.zodb import FileStorageReader

        return FileStorageReader(os.fspath(source))
    storages, opened_here = open_storages(source, read_only=True)
    (storage,) = storages.values()
    return _StorageReader(storage, opened_here)


# -- writing ---------------------------------------------------------------------------


class _Writer(Protocol):
    """A destination of transactions (a storage, or a ZODB FileStorage:
    :class:`atoll.collection.zodb.FileStorageWriter`)."""

    name: str

    def last_transaction(self) -> bytes:
        raise NotImplementedError

    def write_batch(self, records: list[TransactionRecord]) -> int:
        """Commit ``records`` with their tids, as one unit where the destination can
        (else each whole, in order); returns the bytes of record data written."""
        raise NotImplementedError

    def finish(self) -> None:
        """Make the transactions written durable (a storage's commits are already)."""
        return None

    def note_pack(self, pack_tid: bytes) -> None:
        """Carry the source's last pack over (:meth:`Storage.note_pack`)."""

    def close(self) -> None:
        pass


class _StorageWriter(_Writer):
    """Writes through the storage protocol's :meth:`Storage.restore_transactions`."""

    def __init__(self, storage: Storage, opened_here: bool) -> None:
        self.storage, self._opened_here, self.name = storage, opened_here, storage.name

    def last_transaction(self) -> bytes:
        return self.storage.last_transaction()

    def write_batch(self, records: list[TransactionRecord]) -> int:
        return self.storage.restore_transactions(records)

    def note_pack(self, pack_tid: bytes) -> None:
        self.storage.note_pack(pack_tid)

    def close(self) -> None:
        if self._opened_here:
            self.storage.close()


def _writer(destination: Any) -> _Writer:
    if _is_filestorage(destination):
        from atoll.collection.zodb import FileStorageWriter

        return FileStorageWriter(os.fspath(destination))
    if isinstance(destination, (str, os.PathLike)) and _is_plain_path(os.fspath(destination)):
        from atoll.storage.sqlite import SQLiteStorage

        # A file the copy makes itself is written without an fsync per transaction
        # (WAL, synchronous=normal: each commit stays atomic) and made durable when
        # the storage closes (its checkpoint fsyncs the file). A crash before that
        # loses at most the last transactions copied, which a rerun copies again.
        if "\x00" in os.fspath(destination):
            raise TargetError("a target cannot contain a NUL byte")
        return _StorageWriter(SQLiteStorage(os.fspath(destination), synchronous="normal"), True)
    storages, opened_here = open_storages(destination, must_exist=False)
    (storage,) = storages.values()
    if storage.read_only:
        raise TargetError(f"destination {storage.name} is read-only")
    return _StorageWriter(storage, opened_here)


def _is_plain_path(target: str) -> bool:
    from atoll.storage.targets import is_uri

    return not is_uri(target) and not is_config(target) and not target.endswith(".fs")


def _is_filestorage(end: Any) -> bool:
    return isinstance(end, (str, os.PathLike)) and os.fspath(end).endswith(".fs")
