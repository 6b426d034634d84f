"""SQLiteStorage: a database in one SQLite file, the embedded default.

The file format and every statement are in :mod:`atoll.storage.sqlite_sql`. How the
storage protocol maps onto SQLite:

Connections
    Each view (one per atoll Connection) has its own sqlite3 connection, so readers
    never wait for each other or for a writer (WAL mode). The storage has two more: one
    for whole-database reads (history, iteration, ``len``) and one *writer* that every
    commit, oid reservation and pack of this process goes through, under
    ``_commit_lock``.
Snapshots
    A view's snapshot is a committed tid and a load returns the newest revision with
    ``tid <= snapshot``. ``poll()`` reads the newest tid and what changed since the old
    snapshot in one read transaction. The first load after a poll opens a read
    transaction that stays open until the next poll (or ``release()``), so a
    transaction's loads share one SQLite snapshot (about twice as fast as a
    transaction per statement). Connections poll when their transaction ends, so a
    view idle in a pool holds no read transaction and does not keep the WAL from
    being checkpointed.
History-free files (``keep_history=False``)
    A commit deletes the revisions its new ones replace. A view whose read transaction
    started at its snapshot still sees them (SQLite's own MVCC); a view whose read
    transaction started later (first load after another commit) finds the
    revision it needs gone and gets :class:`ReadConflictError`, a transient error the
    transaction is retried after. That takes a commit to that very object between
    the view's poll and its first load; in exchange, no idle view pins the WAL.
    Nothing ever reads a wrong revision.
Commits
    ``tpc_vote`` takes the in-process commit lock, then SQLite's write lock (``BEGIN
    IMMEDIATE``, which serializes commits across processes), checks conflicts, takes
    the next tid from the stored last tid (so tids increase across processes) and
    writes the rows; ``tpc_finish`` commits; ``tpc_abort`` rolls back.
Commits of a collection
    When other durable storages (SQLite files, PostgreSQL schemas) take part in the
    commit, the file either decides it or prepares its part, as the collection's
    protocol says (:mod:`atoll.storage.sqlite_pending`): a process killed at any
    step leaves the transaction in every database or in none, once each is opened
    again.
Checkpoints
    Copying the write-ahead log back into the file happens in a background thread
    once about 4 MiB were committed (:mod:`atoll.storage.sqlite_checkpoint`), not
    inside whichever commit crossed SQLite's threshold.
Oids
    Reserved from the file's counter in blocks that grow from 32 to 4096 per storage
    instance; a reservation is its own committed write, so two processes never get the
    same oid, even after a crash (a crashed process only leaves a gap). Reservations
    are not fsynced: a WAL fsync makes every earlier frame durable too, so no commit
    that uses a reserved oid can survive power loss without its reservation.
Record cache
    Off by default (``cache_size_bytes=0``). A record the views loaded could be kept
    in memory for every connection of the process (:mod:`atoll.storage.cache`), as
    the PostgreSQL storage does, but a local file is already cached by SQLite and the
    operating system, and keeping the records costs every cold load: measured at
    100,000 objects, cold reads ran 5% (``PersistentMapping``) and 11% (``OOBTree``)
    faster without it, and the process kept 25 MiB less. It pays where many
    connections of one process reread the same objects: rereading 10,000 objects
    from it ran 1.25x to 1.4x faster than from the file.
Checksums
    Every revision is stored with its checksum (:mod:`atoll.storage.checksum`);
    loads compare it and raise :class:`~atoll.errors.CorruptRecordError` rather
    than return bytes that changed on disk; :meth:`SQLiteStorage.verify` reads
    every revision. Files of schema version 1 gain the column on their first
    writable open (a quick ``ALTER TABLE``); their older rows stay unchecked.
History-free growth
    A history-free commit deletes the revisions it replaces; every
    ``sqlite_sql.PRUNE_EVERY`` commits it also deletes the transaction rows left
    with no revision, so such a file stays bounded without a pack (collection
    commits' decisions live apart, in ``commit_decisions``).
Locks
    A commit waits at most ``commit_lock_timeout`` seconds (default 60) for this
    process's commit lock, and as long again for the file's write lock (another
    process's commit): then it fails with :class:`~atoll.errors.LockTimeoutError`.
Read-only media
    With ``read_only=True`` a file in a folder this process cannot write (a
    read-only mount, a CD, a folder of another user) is opened through SQLite's
    ``immutable`` read path, which needs no ``-shm`` file; it is refused with the
    reason when its ``-wal`` file holds commits not yet copied into the file,
    which only a process that can write there can read.
Closing
    ``close()`` closes every sqlite3 connection of the storage and of its views and
    stops the checkpoint thread, at once: Python's sqlite3 connections sit in a
    reference cycle and would otherwise stay open until the garbage collector
    runs. :meth:`SQLiteView.close` does the same for one view.
Durability
    ``synchronous="full"`` (the default) fsyncs the WAL at every commit, as ZODB's
    FileStorage does: an acknowledged commit survives power loss.
    ``synchronous="normal"`` skips that fsync: commits survive a crash of the process,
    and the file stays consistent after power loss, but the last commits may be gone.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Generator, Iterable, Iterator, Literal

from atoll import gcpause
from atoll.errors import LockTimeoutError, POSKeyError, ReadOnlyError, StorageError
from atoll.ids import p64, tid_time, u64, z64
from atoll.storage import decisions
from atoll.storage import sqlite_pending as pending
from atoll.storage import sqlite_sql as sql
from atoll.storage.checksum import damaged
from atoll.storage.oid_blocks import StaleBlocks
from atoll.storage.options import check_path as check_path_text
from atoll.storage.options import check_wait
from atoll.storage import sqlite_copy, sqlite_restore
from atoll.storage import sqlite_undo as undo
from atoll.storage.base import (
    verify_step,
    Storage,
    DamagedRecord,
    DataRecord,
    HistoryEntry,
    PackSession,
    Progress,
    TransactionInfo,
    TransactionMeta,
    TransactionRecord,
    check_metadata_key,
)
from atoll.storage.cache import RecordCache
from atoll.storage.sqlite_checkpoint import Checkpointer
from atoll.storage.sqlite_open import BUSY_TIMEOUT, check_path, connect, migrate, open_schema, read_only_media
from atoll.storage.sqlite_rows import _OFFSET, BATCH, MAX_ID, _crc32, _iter_unpack64, _pack64, json_ids, split_oids  # noqa: F401 (sqlite_pack reads BATCH and split_oids here)
from atoll.storage.sqlite_view import SQLiteView
from atoll.storage.sqlite_write import write_transaction

__all__ = ["SQLiteStorage", "SQLiteView", "write_transaction"]

log = logging.getLogger(__name__)

#: Oid reservations grow from the first size to the last, doubling.
OID_BLOCK_FIRST, OID_BLOCK_MAX = 32, 4096
#: Transactions per page of the iterator (one read transaction each).
ITERATOR_PAGE = 100
#: Revisions per statement of verify().
VERIFY_PAGE = 2000

Synchronous = Literal["full", "normal"]

class SQLiteStorage(Storage):
    """A storage in one SQLite file; see the module docstring.

    ``path`` is created (with its tables) when missing, unless ``read_only``.
    ``keep_history`` must match the file's mode. ``synchronous`` chooses durability:
    ``"full"`` survives power loss, ``"normal"`` only process crashes.
    ``cache_size_bytes`` above 0 keeps up to that many bytes of loaded records for
    all connections of the process (see "Record cache" above).
    ``commit_lock_timeout`` bounds every lock wait (see "Locks" above).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        keep_history: bool = True,
        synchronous: Synchronous = "full",
        cache_size_bytes: int = 0,
        commit_lock_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.commit_lock_timeout = check_wait("commit_lock_timeout", commit_lock_timeout)
        self.path = os.path.abspath(check_path_text(path))
        self.name = self.path
        self.read_only = read_only
        self.keep_history = keep_history
        self.synchronous = synchronous
        # Set by close(). The connections below stay assigned, closed: use them through
        # _reader and _committer, which raise "storage ... is closed" once it is set.
        self._closed = False
        self._lock = threading.Lock()  # guards self._conn (whole-database reads)
        # Held from tpc_vote to tpc_finish/tpc_abort, and by oid reservations and pack:
        # it guards self._writer, whose SQLite write lock serializes across processes.
        self._commit_lock = threading.Lock()
        self._oid_lock = threading.Lock()  # guards the two oid counters below
        self._next_oid = 0  # next oid to hand out from the reserved block
        self._oid_limit = 0  # end of the reserved block (exclusive)
        self._oid_block = OID_BLOCK_FIRST  # size of the next reservation
        self._oid_block_void = False  # the rest of the block may hold stored oids: see _skip_oids_of
        self._oid_epoch: int | None = None  # the file's oid epoch when the block was taken
        self._oid_block_start = 0  # the first oid of the block
        self._stale_blocks = StaleBlocks()  # blocks given up (see atoll.storage.oid_blocks)
        self._views: weakref.WeakSet[SQLiteView] = weakref.WeakSet()  # closed with us
        self._q = sql.reads(checksums=True)  # the statements that read records
        self._immutable = False  # read-only media: SQLite's immutable read path
        self._commits_since_prune = 0  # history-free: see "History-free growth"
        self._records = RecordCache(cache_size_bytes)  # shared by the views: see cache.py
        self._writer: sqlite3.Connection | None = None  # commits; None when read-only
        self._checkpointer = Checkpointer(self._connect_writer)
        creating = check_path(self.path, read_only)
        self._sort_key = f"sqlite:{os.path.realpath(self.path)}"
        self._home = decisions.sqlite_home(self.path)
        self._conn: sqlite3.Connection = self._connect(create=creating)  # whole-database reads
        try:
            try:
                self._conn.execute(sql.COUNT_TABLES).fetchone()
            except sqlite3.OperationalError as e:  # read-only media, most likely
                read_only_media(self.path, read_only, e)
                self._conn.close()
                self._immutable = True
                self._conn = self._connect()
            except sqlite3.DatabaseError:
                pass  # not a database: open_schema says so
            version = open_schema(self._conn, self.path, read_only, keep_history)
            if version < sql.SCHEMA_VERSION:
                if read_only:
                    self._q = sql.reads(checksums=False)  # read as it is: no checksums to check
                else:
                    migrate(self._conn, self.path, version)
            if not read_only:
                self._writer = self._connect_writer()
                self._writer.execute(sql.NO_AUTOCHECKPOINT)
                self._writer.execute(sql.WRITER_CACHE)
                with self._holding_commit_lock("settling a prepared commit"):
                    self._settle()
            elif self._conn.execute(sql.HAS_PENDING_TABLE).fetchone()[0] and self._conn.execute(
                sql.SELECT_PENDING
            ).fetchone():
                log.warning(
                    "%s holds a commit that a process prepared and did not finish; a read-only storage "
                    "cannot settle it, so its readers may miss part of a collection's transaction until a "
                    "writable open does",
                    self.path,
                )
        except BaseException:
            self._close_connections()
            raise

    def __repr__(self) -> str:
        mode = ", read-only" if self.read_only else ""
        return f"<SQLiteStorage {self.path!r}{mode}>"

    # -- opening --------------------------------------------------------------

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        """A new sqlite3 connection to the file (see :mod:`atoll.storage.sqlite_open`)."""
        return connect(self.path, self.read_only, create, timeout=self.commit_lock_timeout, immutable=self._immutable)

    def _connect_writer(self) -> sqlite3.Connection:
        """A connection that writes: the commit writer, or the checkpointer's."""
        conn = self._connect()
        conn.execute(sql.SET_SYNCHRONOUS.format(mode=self.synchronous.upper()))
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.path} is closed")

    @property
    def _reader(self) -> sqlite3.Connection:
        """The connection for whole-database reads (hold ``_lock``); StorageError
        once the storage is closed."""
        self._check_open()
        return self._conn

    @property
    def _committer(self) -> sqlite3.Connection:
        """The connection that writes (hold ``_commit_lock``); StorageError once the
        storage is closed, ReadOnlyError if it is read-only."""
        self._check_open()
        writer = self._writer
        if writer is None:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        return writer

    def _settle(self) -> None:
        """Finish or drop the parts of collection commits that a stopped process
        prepared here (:mod:`atoll.storage.sqlite_pending`). The caller holds
        ``_commit_lock`` and no write transaction."""
        try:
            pending.settle(self._committer, write_transaction, self.path, self.keep_history)
        except sqlite3.Error as e:
            raise self._error(e, "settling a prepared commit") from None

    def _error(self, e: sqlite3.Error, doing: str) -> StorageError:
        if self._closed:
            return StorageError(f"storage {self.path} is closed")
        if getattr(e, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
            return LockTimeoutError(
                f"{doing} on {self.path}: another process held the file's write lock for more than "
                f"{self.commit_lock_timeout:g} s (commit_lock_timeout)"
            )
        return StorageError(f"{doing} on {self.path} failed: {e}")

    def _read_error(self, e: sqlite3.DatabaseError, zoid: int | None) -> StorageError:
        """The error for a failed read of a record: damage SQLite itself found (a
        malformed page) is a CorruptRecordError naming the oid; the rest as _error."""
        name = getattr(e, "sqlite_errorname", "")
        if not self._closed and (name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"):
            return damaged(self.path, zoid if zoid is not None else 0, None, f"SQLite found the file damaged ({e})")
        return self._error(e, "loading")

    def _acquire_commit_lock(self, doing: str) -> None:
        """Take this process's commit lock, or raise LockTimeoutError after
        ``commit_lock_timeout`` seconds."""
        if not self._commit_lock.acquire(timeout=self.commit_lock_timeout):
            raise LockTimeoutError(
                f"{doing} on {self.path}: another thread of this process held the commit lock for more than "
                f"{self.commit_lock_timeout:g} s (a long commit or pack; commit_lock_timeout)"
            )

    @contextmanager
    def _holding_commit_lock(self, doing: str) -> Iterator[None]:
        self._acquire_commit_lock(doing)
        try:
            yield
        finally:
            self._commit_lock.release()

    def _check_oid_epoch(self, epoch: int | None) -> None:
        """At a commit, under the write lock: if a copy or restore (of any process)
        wrote oids since this process took its oid block (the file's oid epoch
        moved), the block may hold some of them, and nothing told this process:
        give the block up (see :mod:`atoll.storage.oid_blocks`)."""
        if epoch != self._oid_epoch:
            self._give_up_oid_block()
        self._oid_epoch = epoch

    def _give_up_oid_block(self) -> None:
        # A flag, not the counters under _oid_lock: a copy calls this holding the
        # commit lock, which new_oid() takes while holding _oid_lock to reserve.
        self._oid_block_void = True
        self._stale_blocks.add(self._oid_block_start, self._oid_limit)

    def _skip_oid_range(self, lowest: int, highest: int) -> None:
        """Give up the rest of the reserved oid block if oids from ``lowest`` to
        ``highest`` were written (by a copy): see _skip_oids_of."""
        if lowest < self._oid_limit and highest >= self._oid_block_start:
            self._give_up_oid_block()

    def _skip_oids_of(self, oids: Iterable[bytes]) -> None:
        """Give up the rest of the reserved oid block if ``oids`` (written by a commit,
        this process's or another's) fall in it: such an oid was not handed out from
        the block, so a copy or import stored it, and the block may hold more. The
        next new_oid() reserves past everything stored (insert_commit moves the
        file's counter)."""
        low, high = self._next_oid, self._oid_limit
        if low >= high or not oids:
            return
        lo, hi = _pack64(low), _pack64(high)
        if max(oids) < lo or min(oids) >= hi:  # in C: the usual answer
            return
        if any(lo <= oid < hi for oid in oids):
            self._give_up_oid_block()

    # -- the Storage protocol ---------------------------------------------------

    def open_view(self, before: bytes | None = None) -> SQLiteView:
        self._check_open()
        view = SQLiteView(self, before)
        self._views.add(view)
        return view

    def new_oid(self) -> bytes:
        if self._closed or self.read_only:
            self._check_open()
            raise ReadOnlyError(f"storage {self.path} is read-only")
        # Called while a commit serializes, with the garbage collector paused: a
        # wait here (another thread reserving, or holding the commit lock) lets it run.
        gcpause.acquire(self._oid_lock)
        try:
            oid = self._next_oid
            if oid >= self._oid_limit or self._oid_block_void:
                self._oid_block_void = False  # before: a give-up during the reservation counts
                with gcpause.resumed():
                    self._reserve_oids()
                oid = self._next_oid
            self._next_oid = oid + 1
        finally:
            self._oid_lock.release()
        return _pack64(oid)

    def _reserve_oids(self) -> None:
        """Take the next block of oids from the file's counter (under _oid_lock)."""
        size = self._oid_block
        with self._holding_commit_lock("reserving oids"):
            writer = self._committer
            try:
                writer.execute(sql.SET_SYNCHRONOUS.format(mode="NORMAL"))  # see "Oids" above
                try:
                    with write_transaction(writer):
                        first = int(writer.execute(sql.SELECT_NEXT_OID).fetchone()[0])
                        writer.execute(sql.UPDATE_NEXT_OID, (first + size,))
                        epoch = (writer.execute(sql.SELECT_OID_EPOCH).fetchone() or (None,))[0]
                finally:
                    writer.execute(sql.SET_SYNCHRONOUS.format(mode=self.synchronous.upper()))
            except sqlite3.Error as e:
                raise self._error(e, "reserving oids") from None
        self._next_oid, self._oid_limit, self._oid_block_start = first, first + size, first
        self._oid_epoch = epoch
        self._oid_block = min(size * 2, OID_BLOCK_MAX)

    def last_transaction(self) -> bytes:
        self._check_open()
        with self._lock:
            try:
                last = self._reader.execute(sql.SELECT_LAST_TID).fetchone()[0]
            except sqlite3.Error as e:
                raise self._error(e, "reading the last transaction") from None
        return p64(last) if last else z64

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        self._check_open()
        with self._lock:
            try:
                rows = self._reader.execute(sql.HISTORY, (u64(oid), size)).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, "reading history") from None
        if not rows:
            raise POSKeyError(oid)
        return [
            HistoryEntry(p64(tid), tid_time(p64(tid)), user or "", description or "", length)
            for tid, length, user, description in rows
        ]

    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[TransactionRecord]:
        self._check_open()
        after = u64(start) - 1 if start is not None else -1
        upto = u64(stop) if stop is not None else MAX_ID
        while True:
            page = self._transactions_page(after, upto)
            if not page:
                return
            yield from page
            after = u64(page[-1].tid)

    def _transactions_page(self, after: int, upto: int) -> list[TransactionRecord]:
        """Up to ITERATOR_PAGE transactions with tids in (after, upto], from one snapshot.

        One statement per transaction finds its revisions by ``(zoid, tid)`` (an
        index seek each): measured on 100,000 revisions, as fast as scanning the
        table in row order, which would also have to place the rows of a
        collection commit's prepared part, written before later tids committed.
        The per-record work here is kept to C calls (oids unpacked at once,
        checksums checked inline)."""
        self._check_open()
        path, records_of = self.path, self._q.RECORDS_OF_TRANSACTION
        with self._lock:
            conn = self._reader
            try:
                conn.execute(sql.BEGIN_READ)
                try:
                    page = []
                    for tid, user, description, extension, oids in conn.execute(
                        sql.TRANSACTIONS_PAGE, (after, upto, ITERATOR_PAGE)
                    ).fetchall():
                        btid = _pack64(tid)
                        zoids = [zoid for (zoid,) in _iter_unpack64(oids)]
                        states = {}
                        for zoid, state, stored in conn.execute(records_of, (json_ids(zoids), tid)):
                            if stored is not None and (
                                state.__class__ is not bytes or _crc32(state, zoid ^ tid) - _OFFSET != stored
                            ):
                                raise damaged(path, zoid, tid)
                            states[zoid] = state
                        records = [  # in the order the commit stored them; gone ones left out
                            DataRecord(oids[8 * i : 8 * i + 8], btid, states[zoid] or None)
                            for i, zoid in enumerate(zoids)
                            if zoid in states
                        ]
                        meta = TransactionMeta.extension_from_bytes(extension)
                        page.append(TransactionRecord(btid, user, description, meta, records))
                finally:
                    conn.execute(sql.COMMIT)
            except sqlite3.Error as e:
                raise self._error(e, "iterating transactions") from None
        return page

    def restore_from(self, source: Storage, start: bytes | None = None) -> Generator[tuple[int, int, int], None, None] | None:
        """See :meth:`Storage.restore_from`: another SQLite file of the same history
        mode is copied inside SQLite (:mod:`atoll.storage.sqlite_copy`); not from a
        version 1 file opened read-only (no checksums to copy)."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        if (
            not isinstance(source, SQLiteStorage)
            or source.keep_history != self.keep_history
            or source._q is not sql.reads(checksums=True)
        ):
            return None
        source._check_open()
        after = u64(start) - 1 if start is not None else -1
        return sqlite_copy.copy_file(self, source.path, source._immutable, after)

    def restore_transactions(self, transactions: Iterable[TransactionRecord]) -> int:
        """See :meth:`Storage.restore_transactions`: the whole batch in one write
        transaction (:mod:`atoll.storage.sqlite_restore`)."""
        return sqlite_restore.restore_transactions(self, transactions)

    def pack_session(self, pack_tid: bytes) -> PackSession:
        """See :meth:`Storage.pack_session` and :mod:`atoll.storage.sqlite_pack`."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        from atoll.storage.sqlite_pack import SQLitePackSession

        return SQLitePackSession(self, pack_tid)

    def vacuum(self) -> int:
        """See :meth:`Storage.vacuum` and :func:`atoll.storage.sqlite_pack.vacuum`."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        from atoll.storage.sqlite_pack import vacuum

        return vacuum(self)

    def get_metadata(self) -> dict[str, str]:
        self._check_open()
        with self._lock:
            try:
                return {key: str(value) for key, value in self._reader.execute(sql.SELECT_APP_META)}
            except sqlite3.Error as e:
                raise self._error(e, "reading metadata") from None

    def set_metadata(self, key: str, value: str) -> None:
        check_metadata_key(key)
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        with self._holding_commit_lock("writing metadata"):
            try:
                writer = self._committer
                with write_transaction(writer):
                    writer.execute(sql.UPSERT_META, (key, str(value)))
            except sqlite3.Error as e:
                raise self._error(e, "writing metadata") from None

    def verify(self, progress: Progress | None = None) -> list[DamagedRecord]:
        """See :meth:`Storage.verify`: every revision, a page at a time in row order,
        all from one read snapshot on a connection of its own (commits go on)."""
        self._check_open()
        found: list[DamagedRecord] = []
        checked = unchecked = 0
        after = 0
        conn = self._connect()
        try:
            conn.execute(sql.BEGIN_READ)
            while True:
                try:
                    rows = conn.execute(self._q.VERIFY_PAGE, (after, VERIFY_PAGE)).fetchall()
                except sqlite3.DatabaseError as e:
                    # The b-tree itself is damaged past this row: SQLite cannot go on.
                    found.append(
                        DamagedRecord(self.path, _pack64(0), None, f"the file is damaged after row {after}: {e}")
                    )
                    break
                for rowid, zoid, tid, state, stored in rows:
                    after = rowid
                    if stored is None:
                        unchecked += 1
                    elif not isinstance(state, bytes) or _crc32(state, zoid ^ tid) - _OFFSET != stored:
                        found.append(
                            DamagedRecord(
                                self.path, _pack64(zoid & MAX_ID), _pack64(tid & MAX_ID), damaged(self.path, zoid, tid).detail
                            )
                        )
                    else:
                        checked += 1
                if len(rows) < VERIFY_PAGE:
                    break
                if progress is not None:
                    progress(verify_step(self.path, checked + unchecked + len(found), len(found)))
            conn.execute(sql.COMMIT)
        except sqlite3.Error as e:
            raise self._error(e, "verifying") from None
        finally:
            conn.close()
        if progress is not None:
            progress(verify_step(self.path, checked + unchecked + len(found), len(found), unchecked, finished=True))
        return found

    def transaction_log(self, before: bytes | None = None, limit: int = 100) -> list[TransactionInfo]:
        return undo.transaction_log(self, before, limit)

    def find_transactions(
        self, keys: Iterable[str], low: bytes | None = None, high: bytes | None = None
    ) -> dict[str, bytes]:
        return undo.find_transactions(self, keys, low, high)

    def last_pack(self) -> bytes:
        return undo.last_pack(self)

    def note_pack(self, pack_tid: bytes) -> None:
        with self._holding_commit_lock("recording a pack"):
            try:
                with write_transaction(self._committer) as writer:
                    writer.execute(sql.SET_LAST_PACK, (u64(pack_tid),))
            except sqlite3.Error as e:
                raise self._error(e, "recording a pack") from None

    def __len__(self) -> int:
        self._check_open()
        with self._lock:
            try:
                return undo.count_objects(self._reader)
            except sqlite3.Error as e:
                raise self._error(e, "counting objects") from None

    def get_size(self) -> int:
        self._check_open()
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def sort_key(self) -> str:
        return self._sort_key

    def decision_home(self) -> str:
        return self._home

    def _prune_decisions(self) -> None:
        """Drop decisions older than :data:`decisions.RETENTION` (under _commit_lock)."""
        try:
            writer = self._committer
            with write_transaction(writer):
                writer.execute(sql.PRUNE_DECISIONS, (time.time() - decisions.RETENTION,))
        except sqlite3.Error as e:
            raise self._error(e, "pruning commit decisions") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for view in list(self._views):
            view.close()
        self._checkpointer.stop()
        with self._lock:
            self._close_connections()

    def _close_connections(self) -> None:
        self._conn.close()
        if self._writer is not None:
            self._writer.close()
