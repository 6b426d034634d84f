"""Many transactions in one SQLite write transaction: the SQLite storage's
:meth:`~atoll.storage.base.Storage.restore_transactions`, what a copy writes.

A commit through a view costs a poll, the commit lock, ``BEGIN IMMEDIATE``, the last
tid, its rows and a ``COMMIT`` (with its fsync) per transaction; a copy of 1,000
small transactions spent most of its writing time there, not in its rows. Here the
whole batch is one write transaction: each source transaction still gets its own
``transactions`` row, tid and revisions (the rows a view's commit writes,
:func:`~atoll.storage.sqlite_write.insert_commit`), and the batch commits as a unit,
so an error or a crash leaves none of it and a restarted copy continues after the
last transaction committed before.

There is no conflict check: the records replace whatever is current (in a
history-free file, the older revisions of every oid written are deleted, as a
commit that read them would). Tids are checked to increase, from the file's last
tid (read under the write lock, so another process's commit in between is seen).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Iterable

from atoll import gcpause
from atoll.errors import ReadOnlyError
from atoll.ids import p64
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import DELETED, TransactionMeta, TransactionRecord, commit_tid
from atoll.storage.sqlite_rows import MAX_ID, _unpack64
from atoll.storage.sqlite_write import begin_commit, insert_commit

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["restore_transactions"]

#: The read serial given for every record in a history-free file: not ``z64``, so
#: that insert_commit deletes the revisions the record replaces (if there are any).
_REPLACES = b"\xff" * 8


def restore_transactions(storage: SQLiteStorage, transactions: Iterable[TransactionRecord]) -> int:
    """See :meth:`Storage.restore_transactions` and the module docstring; returns
    the bytes of record data written."""
    storage._check_open()
    if storage.read_only:
        raise ReadOnlyError(f"storage {storage.path} is read-only")
    storage._acquire_commit_lock("restoring transactions")
    try:
        writer = storage._writer
        assert writer is not None
        last = begin_commit(storage, writer, "restoring transactions")
        try:
            written, oids, cached = _write(storage, writer, last, transactions)
            writer.execute(sql.COMMIT)
        except sqlite3.Error as e:
            _rollback(writer)
            raise storage._error(e, "restoring transactions") from None
        except BaseException:
            _rollback(writer)
            raise
        storage._checkpointer.finish(writer)
    finally:
        storage._commit_lock.release()
    # Committed: what a view's tpc_finish does after its COMMIT, for each transaction.
    for tid, stores in cached:
        storage._records.committed({oid: data for oid, (_, data) in stores.items()}, p64(tid))
    storage._skip_oids_of(oids)
    storage._checkpointer.wrote(written)
    return written


def _write(
    storage: SQLiteStorage, writer: sqlite3.Connection, last: int, transactions: Iterable[TransactionRecord]
) -> tuple[int, set[bytes], list[tuple[int, dict[bytes, tuple[bytes, bytes]]]]]:
    """Insert every transaction's rows inside the write transaction. Returns the
    bytes of record data written, every oid written, and (tid, stores) of each
    transaction for the record cache (only when the storage keeps one)."""
    keep_history = storage.keep_history
    keep_for_cache = bool(storage._records.max_bytes)
    written, highest = 0, -1
    oids_written: set[bytes] = set()
    cached = []
    for record in transactions:
        meta = TransactionMeta(extension=record.extension, tid=record.tid)
        tid = _unpack64(commit_tid(meta, p64(last) if last else None))[0]
        serial = b"" if keep_history else _REPLACES  # a history-preserving file never reads it
        stores = {r.oid: (serial, DELETED if r.data is None else r.data) for r in record.records}
        oids = sorted(stores)  # the order a view's commit inserts in
        fields = (record.user, record.description, meta.extension_bytes(), "")
        # The oid counter is moved once, after the batch (``counted``: no oid is below it).
        # The collector is paused for the rows (see atoll.gcpause), not around the
        # iteration of ``transactions``, which may wait for a source.
        with gcpause.paused():
            written += insert_commit(writer, tid, fields, stores, oids, keep_history, 0, None, MAX_ID)
        if oids:
            highest = max(highest, _unpack64(oids[-1])[0])
        oids_written.update(oids)
        if keep_for_cache:
            cached.append((tid, stores))
        last = tid
        if not keep_history:
            storage._commits_since_prune += 1
    if highest >= 0:
        writer.execute(sql.ADVANCE_NEXT_OID, (highest + 1,))
    if not keep_history and storage._commits_since_prune >= sql.PRUNE_EVERY:
        storage._commits_since_prune = 0
        writer.execute(sql.PRUNE_REPLACED_TRANSACTIONS, (last, last))
    return written, oids_written, cached


def _rollback(writer: sqlite3.Connection) -> None:
    if writer.in_transaction:
        writer.execute(sql.ROLLBACK)
