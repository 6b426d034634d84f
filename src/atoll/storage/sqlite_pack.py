"""Pack for :class:`~atoll.storage.sqlite.SQLiteStorage`: the storage's side of the
collector's :class:`~atoll.storage.base.PackSession`, and giving space back.

The walk itself is :mod:`atoll.collection.marking`'s; this module answers its
questions in SQL (the states at the pack tid, a batch of oids per statement; the
revisions committed since a tid, a page of transactions at a time) and deletes what
it decides, under SQLite's write lock. The statements are in
:mod:`atoll.storage.sqlite_sql` with the others.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from typing import TYPE_CHECKING, Container, Iterator, Sequence

from atoll.errors import StorageError
from atoll.ids import u64
from atoll.storage import sqlite as _sqlite
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import PackSession, PackStats
from atoll.storage.checksum import check as check_checksum

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["SQLitePackSession", "vacuum"]

#: Transactions per page when reading what was committed after the pack tid.
TRANSACTIONS_PAGE = 200
#: How long lock() waits for a live process's prepared part of a collection commit
#: to be decided: this many times, this many seconds apart.
PENDING_WAITS, PENDING_WAIT = 100, 0.05
#: Seconds the final checkpoint of a vacuum waits for readers of older snapshots
#: before leaving the log for the next checkpoint to empty.
CHECKPOINT_WAIT_MS = 2000


class SQLitePackSession(PackSession):
    """One pack of an SQLite file (see :class:`~atoll.storage.base.PackSession`).

    Until :meth:`lock`, reads go through a connection of the session's own in
    autocommit mode (one short read transaction per statement), so the walk holds
    back neither commits nor checkpoints. :meth:`lock` takes the process's commit lock
    and the file's write lock (``BEGIN IMMEDIATE``) on the storage's writer;
    :meth:`sweep` deletes and commits in that one write transaction.
    """

    def __init__(self, storage: SQLiteStorage, pack_tid: bytes) -> None:
        self.pack_tid = pack_tid
        self._storage = storage
        self._tid = u64(pack_tid)
        self._walk_tid = self._tid if storage.keep_history else _sqlite.MAX_ID
        self._reader: sqlite3.Connection | None = storage._connect()
        # new_revisions has returned what was committed up to here. A commit whose tid
        # is below the pack tid (its clock read earlier) may still become visible
        # after the walk has read the states it changes: start from the last tid
        # visible now if that is lower.
        last = self._reader.execute(sql.SELECT_LAST_TID).fetchone()[0] or 0
        self._reported = min(self._tid, last)
        self._writer: sqlite3.Connection | None = None  # set while locked

    def _conn(self) -> sqlite3.Connection:
        conn = self._writer or self._reader
        if conn is None:
            raise self._storage._error(sqlite3.OperationalError("the pack session is closed"), "packing")
        return conn

    def new_revisions(self) -> Iterator[tuple[int, bytes]]:
        try:
            while True:
                conn = self._conn()
                page = conn.execute(sql.TRANSACTIONS_AFTER_PAGE, (self._reported, TRANSACTIONS_PAGE)).fetchall()
                if not page:
                    return
                for tid, oids in page:
                    ids = _sqlite.json_ids(u64(oid) for oid in _sqlite.split_oids(oids))
                    # A revision since replaced (history-free) is gone: its successor is
                    # in a later transaction, which this loop reaches too.
                    rows = conn.execute(self._storage._q.RECORDS_OF_TRANSACTION, (ids, tid)).fetchall()
                    for zoid, state, stored in rows:
                        check_checksum(self._storage.path, zoid, tid, state, stored)
                        yield zoid, state
                    self._reported = tid
        except sqlite3.Error as e:
            raise self._storage._error(e, "packing") from None

    def states(self, oids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        storage = self._storage
        try:
            rows = self._conn().execute(storage._q.LOAD_MANY_AT, (_sqlite.json_ids(oids), self._walk_tid)).fetchall()
        except sqlite3.Error as e:
            raise storage._error(e, "packing") from None
        # A damaged record could hide references: the pack stops rather than guess.
        for zoid, state, tid, stored in rows:
            check_checksum(storage.path, zoid, tid, state, stored)
        return ((zoid, state) for zoid, state, _, _ in rows)

    def lock(self) -> None:
        storage = self._storage
        storage._check_open()
        if self._writer is not None:
            return
        storage._acquire_commit_lock("packing")
        try:
            writer = storage._committer
            for _ in range(PENDING_WAITS):
                # Parts of collection commits prepared here are settled first (by a
                # stopped process: finished or dropped); a live committer's part is
                # waited for, so that no revision the sweep does not see is pending.
                storage._settle()
                storage._prune_decisions()
                writer.execute(sql.BEGIN_WRITE)
                if not writer.execute(sql.LAST_TID_AND_PENDING).fetchone()[1]:
                    break
                writer.execute(sql.ROLLBACK)
                time.sleep(PENDING_WAIT)
            else:
                raise StorageError(
                    f"packing {storage.path}: a collection commit prepared here stayed undecided for "
                    f"{PENDING_WAITS * PENDING_WAIT:g} s; pack again when it is done"
                )
        except BaseException as e:
            storage._commit_lock.release()
            if isinstance(e, sqlite3.Error):
                raise storage._error(e, "packing") from None
            raise
        self._writer = writer

    def sweep(self, keep: Container[int] | None) -> PackStats:
        storage, writer = self._storage, self._writer
        assert writer is not None, "sweep() needs lock() first"
        stats = PackStats(size_before=storage.get_size())
        try:
            if storage.keep_history:
                stats.revisions_removed += writer.execute(sql.DELETE_OLD_REVISIONS, (self._tid,)).rowcount
            if keep is not None:
                garbage = array("q")
                for (zoid,) in writer.execute(sql.OBJECTS_NOT_WRITTEN_AFTER, (self._tid,)):
                    if zoid not in keep:
                        garbage.append(zoid)
                stats.objects_removed = len(garbage)
                for start in range(0, len(garbage), _sqlite.BATCH):
                    ids = _sqlite.json_ids(garbage[start : start + _sqlite.BATCH])
                    stats.revisions_removed += writer.execute(sql.DELETE_OBJECTS, (ids,)).rowcount
            stats.transactions_removed = writer.execute(sql.DELETE_EMPTY_TRANSACTIONS).rowcount
            writer.execute(sql.SET_LAST_PACK, (self._tid,))  # undo refuses what pack may have cut
            writer.execute(sql.COMMIT)
        except sqlite3.Error as e:
            raise storage._error(e, "packing") from None
        finally:
            self.close()
        stats.size_after = storage.get_size()
        return stats

    def close(self) -> None:
        storage = self._storage
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                if writer.in_transaction:
                    writer.execute(sql.ROLLBACK)
            except sqlite3.Error:
                pass  # the storage is closing under us; nothing was committed
            finally:
                storage._records.clear()  # records of collected objects may be cached
                storage._commit_lock.release()
                storage._checkpointer.request()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def vacuum(storage: SQLiteStorage) -> int:
    """Give the free pages of ``storage``'s file back to the file system and empty its
    log; returns the size after.

    A file made by this version keeps ``auto_vacuum = INCREMENTAL``: the free pages
    are moved to the end and cut off in one short write transaction. An older file is
    rebuilt once with ``VACUUM`` (which also turns incremental vacuuming on); that
    holds the write lock for as long as copying the file takes, but readers go on
    (WAL). Then a ``TRUNCATE`` checkpoint empties the log, waiting at most
    :data:`CHECKPOINT_WAIT_MS` for readers of older snapshots; if they are still
    there the log shrinks at a later checkpoint.
    """
    writer = storage._committer
    with storage._holding_commit_lock("vacuuming"):
        try:
            if writer.execute(sql.SELECT_AUTO_VACUUM).fetchone()[0] == sql.AUTO_VACUUM_INCREMENTAL:
                # executescript steps the pragma to the end; execute() would free one page.
                writer.executescript(sql.INCREMENTAL_VACUUM)
            else:
                writer.execute(sql.SET_AUTO_VACUUM_INCREMENTAL)
                writer.execute(sql.VACUUM)
            writer.execute(sql.SET_BUSY_TIMEOUT.format(ms=CHECKPOINT_WAIT_MS))
            try:
                # The background checkpointer may be running one (SQLITE_BUSY at once):
                # try again until it is done or the wait is over.
                deadline = time.monotonic() + CHECKPOINT_WAIT_MS / 1000
                while writer.execute(sql.CHECKPOINT_TRUNCATE).fetchone()[0] and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                writer.execute(sql.SET_BUSY_TIMEOUT.format(ms=int(_sqlite.BUSY_TIMEOUT * 1000)))
        except sqlite3.Error as e:
            raise storage._error(e, "vacuuming") from None
    return storage.get_size()
