"""Many transactions in one SQLite write transaction: the SQLite storage's
:meth:`~atoll.storage.base.Storage.restore_transactions`, what a copy writes.

A commit through a view costs a poll, the commit lock, ``BEGIN IMMEDIATE``, the last
tid, its rows and a ``COMMIT`` (with its fsync) per transaction; a copy of 1,000
small transactions spent most of its writing time there, not in its rows. Here the
whole batch is one write transaction: each source transaction still gets its own
``transactions`` row, tid and revisions (the rows a view's commit writes), and the
batch commits as a unit, so an error or a crash leaves none of it and a restarted
copy continues after the last transaction committed before.

There is no conflict check: the records replace whatever is current (in a
history-free file, the older revisions of every oid written are deleted, as a
commit that read them would). Tids are checked to increase, from the file's last
tid (read under the write lock, so another process's commit in between is seen).
"""

from __future__ import annotations

import sqlite3
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Iterable

from atoll import gcpause
from atoll.ids import p64
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import DELETED, TransactionMeta, TransactionRecord, commit_tid
from atoll.storage.restore import last_of_each_oid
from atoll.storage.sqlite_rows import _OFFSET, _crc32, _iter_unpack64, _unpack64
from atoll.storage.sqlite_write import begin_commit, moved_oid_epoch, rollback

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["restore_transactions"]

# The checksum of each revision (atoll.storage.checksum), as C calls.
_minus = int.__sub__
_xor = int.__xor__
_oid, _data, _first = attrgetter("oid"), attrgetter("data"), itemgetter(0)

#: Revisions per INSERT statement of a batch: fewer, larger statements cost less
#: per row; one of 2,000 rows compiles to a statement of several hundred KiB.
RESTORE_ROWS_PER_INSERT = 500


def restore_transactions(storage: SQLiteStorage, transactions: Iterable[TransactionRecord]) -> int:
    """See :meth:`Storage.restore_transactions` and the module docstring; returns
    the bytes of record data written."""
    with storage._holding_commit_lock("restoring transactions"):
        writer = storage._committer  # StorageError once closed, ReadOnlyError if read-only
        last = begin_commit(storage, writer, "restoring transactions")
        try:
            written, oids, cached = _write(storage, writer, last, transactions)
            # Before the COMMIT: once it is in, a new_oid() of another thread must not
            # hand out one of these from this process's block (giving it up early costs
            # nothing if the COMMIT then fails).
            storage._skip_oids_of(oids)
            if oids:
                moved_oid_epoch(storage, writer)
            writer.execute(sql.COMMIT)
        except sqlite3.Error as e:
            rollback(writer)
            raise storage._error(e, "restoring transactions") from None
        except BaseException:
            rollback(writer)
            raise
        storage._checkpointer.finish_in_bulk(writer, written)
    # Committed: what a view's tpc_finish does after its COMMIT, for each transaction.
    for tid, records in cached:
        storage._records.committed(records, p64(tid))
    storage._checkpointer.wrote(written)
    return written


def _write(
    storage: SQLiteStorage, writer: sqlite3.Connection, last: int, transactions: Iterable[TransactionRecord]
) -> tuple[int, set[bytes], list[tuple[int, dict[bytes, bytes | None]]]]:
    """Insert every transaction's rows inside the write transaction: the rows a
    view's commit writes (:func:`~atoll.storage.sqlite_write.insert_commit`), but
    for the whole batch at once, so that a small transaction costs a few list
    appends rather than statements of its own. Returns the bytes of record data
    written, every oid written, and (tid, records) of each transaction for the
    record cache (only when the storage keeps one)."""
    keep_history = storage.keep_history
    keep_for_cache = bool(storage._records.max_bytes)
    written, ended = 0, False
    oids_written: set[bytes] = set()
    cached = []
    rows: list[tuple] = []
    states: list = []  # zoid, tid, state, checksum of every revision, flat
    replaced: list[tuple[int, int]] = []  # history-free: (zoid, tid) whose older revisions go
    for record in transactions:
        meta = TransactionMeta(extension=record.extension, tid=record.tid)
        tid = _unpack64(commit_tid(meta, p64(last) if last else None))[0]
        # Per revision, only calls that run in C: this loop is most of a copy's Python.
        revisions = sorted(last_of_each_oid(record.records), key=_oid)  # the order a view's commit inserts in
        oids = list(map(_oid, revisions))
        datas = list(map(_data, revisions))
        if not all(datas):
            ended = True  # an undone creation: len() must look for ended objects from now on
            datas = [data or DELETED for data in datas]  # None: deleted
        packed = b"".join(oids)
        rows.append((tid, record.user, record.description, meta.extension_bytes(), "", packed, 0))
        zoids = list(map(_first, _iter_unpack64(packed)))
        sums = map(_minus, map(_crc32, datas, map(_xor, zoids, repeat(tid))), repeat(_OFFSET))
        states += chain.from_iterable(zip(zoids, repeat(tid), datas, sums))
        written += sum(map(len, datas))
        if not keep_history:
            replaced += zip(zoids, repeat(tid))
            storage._commits_since_prune += 1
        oids_written.update(oids)
        if keep_for_cache:
            cached.append((tid, dict(zip(oids, datas))))
        last = tid
    # The collector is paused for the statements (see atoll.gcpause), not around
    # the iteration of ``transactions``, which may wait for a source.
    with gcpause.paused():
        writer.executemany(sql.INSERT_TRANSACTION, rows)
        rows_per = _rows_per_insert(writer)
        per = 4 * rows_per
        full = len(states) - len(states) % per
        for at in range(0, full, per):
            writer.execute(sql.insert_revisions(rows_per), states[at : at + per])
        # The rest one row per statement: a statement of its own length would add
        # a compiled statement per batch to sqlite3's cache (measured: 70 MiB more
        # after 3,000 transactions with 2,000-row statements, 2 MiB with 500).
        rest = iter(states[full:])
        writer.executemany(sql.insert_revisions(1), zip(rest, rest, rest, rest))
        if replaced:
            writer.executemany(sql.DELETE_OLDER_REVISIONS, replaced)
    if oids_written:
        writer.execute(sql.ADVANCE_NEXT_OID, (_unpack64(max(oids_written))[0] + 1,))
    if ended:
        writer.execute(sql.MARK_ENDED_OBJECTS)
    if not keep_history and storage._commits_since_prune >= sql.PRUNE_EVERY:
        storage._commits_since_prune = 0
        writer.execute(sql.PRUNE_REPLACED_TRANSACTIONS, (last, last))
    return written, oids_written, cached


def _rows_per_insert(writer: sqlite3.Connection) -> int:
    """Revisions per INSERT: RESTORE_ROWS_PER_INSERT, or fewer where this SQLite
    build binds fewer parameters to a statement (999 in builds before 3.32)."""
    return max(1, min(RESTORE_ROWS_PER_INSERT, writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4))

