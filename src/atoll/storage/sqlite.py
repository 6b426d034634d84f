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
import struct
import threading
import time
import weakref
import zlib
from contextlib import contextmanager
from typing import Iterable, Iterator, Literal

from atoll import gcpause
from atoll.errors import (
    LockTimeoutError,
    POSKeyError,
    ReadConflictError,
    ReadOnlyError,
    StorageError,
    StorageTransactionError,
)
from atoll.ids import p64, tid_time, u64, z64
from atoll.storage import decisions
from atoll.storage import sqlite_pending as pending
from atoll.storage import sqlite_sql as sql
from atoll.storage.checksum import check as check_checksum
from atoll.storage.checksum import damaged
from atoll.storage.options import check_path as check_path_text
from atoll.storage.options import check_wait
from atoll.storage import sqlite_undo as undo
from atoll.storage.base import (
    CommitBuffer,
    commit_tid,
    Storage,
    StorageView,
    DamagedRecord,
    DataRecord,
    HistoryEntry,
    PackSession,
    Progress,
    Resolver,
    TransactionInfo,
    TransactionMeta,
    TransactionRecord,
    check_metadata_key,
    commit_role,
)
from atoll.storage.cache import RecordCache
from atoll.storage.sqlite_checkpoint import Checkpointer
from atoll.storage.sqlite_open import BUSY_TIMEOUT, check_path, connect, migrate, open_schema, read_only_media
from atoll.storage.sqlite_write import insert_commit, write_transaction

__all__ = ["SQLiteStorage", "SQLiteView", "write_transaction"]

log = logging.getLogger(__name__)

#: Oids per JSON batch in load_many and the pack's walk.
BATCH = 1000
#: The largest tid/oid SQLite can hold (signed 64 bits): "no upper bound".
MAX_ID = 2**63 - 1
#: Oid reservations grow from the first size to the last, doubling.
OID_BLOCK_FIRST, OID_BLOCK_MAX = 32, 4096
#: Transactions per page of the iterator (one read transaction each).
ITERATOR_PAGE = 100
#: Revisions per statement of verify().
VERIFY_PAGE = 2000

Synchronous = Literal["full", "normal"]

# The hot paths convert oids and tids with these directly (ids.p64/u64 add a call).
_pack64 = struct.Struct(">Q").pack
_unpack64 = struct.Struct(">Q").unpack
# ... and check checksums inline (see checksum.py; a call per record costs more).
_crc32 = zlib.crc32
_OFFSET = 1 << 31


def json_ids(ids: Iterable[int]) -> str:
    """A JSON array of integers: how a batch of oids reaches a query (``json_each``)."""
    return "[" + ",".join(map(str, ids)) + "]"


def split_oids(packed: bytes) -> list[bytes]:
    """The oids of a ``transactions.oids`` value (concatenated 8-byte oids)."""
    return [packed[i : i + 8] for i in range(0, len(packed), 8)]


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
        self._closed = False
        self._lock = threading.Lock()  # guards self._conn (whole-database reads)
        # Held from tpc_vote to tpc_finish/tpc_abort, and by oid reservations and pack:
        # it guards self._writer, whose SQLite write lock serializes across processes.
        self._commit_lock = threading.Lock()
        self._oid_lock = threading.Lock()  # guards the two oid counters below
        self._next_oid = 0  # next oid to hand out from the reserved block
        self._oid_limit = 0  # end of the reserved block (exclusive)
        self._oid_block = OID_BLOCK_FIRST  # size of the next reservation
        self._views: weakref.WeakSet[SQLiteView] = weakref.WeakSet()  # closed with us
        self._q = sql.reads(checksums=True)  # the statements that read records
        self._immutable = False  # read-only media: SQLite's immutable read path
        self._commits_since_prune = 0  # history-free: see "History-free growth"
        self._records = RecordCache(cache_size_bytes)  # shared by the views: see cache.py
        self._conn: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._checkpointer = Checkpointer(self._connect_writer)
        creating = check_path(self.path, read_only)
        self._sort_key = f"sqlite:{os.path.realpath(self.path)}"
        self._home = decisions.sqlite_home(self.path)
        try:
            self._conn = self._connect(create=creating)
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

    def _settle(self) -> None:
        """Finish or drop the parts of collection commits that a stopped process
        prepared here (:mod:`atoll.storage.sqlite_pending`). The caller holds
        ``_commit_lock`` and no write transaction."""
        try:
            pending.settle(self._writer, write_transaction, self.path, self.keep_history)  # type: ignore[arg-type]
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
            with self._oid_lock:
                self._next_oid = self._oid_limit

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
        if not self._oid_lock.acquire(blocking=False):
            with gcpause.resumed():
                self._oid_lock.acquire()
        try:
            oid = self._next_oid
            if oid >= self._oid_limit:
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
            writer = self._writer
            assert writer is not None
            try:
                writer.execute(sql.SET_SYNCHRONOUS.format(mode="NORMAL"))  # see "Oids" above
                try:
                    with write_transaction(writer):
                        first = int(writer.execute(sql.SELECT_NEXT_OID).fetchone()[0])
                        writer.execute(sql.UPDATE_NEXT_OID, (first + size,))
                finally:
                    writer.execute(sql.SET_SYNCHRONOUS.format(mode=self.synchronous.upper()))
            except sqlite3.Error as e:
                raise self._error(e, "reserving oids") from None
        self._next_oid, self._oid_limit = first, first + size
        self._oid_block = min(size * 2, OID_BLOCK_MAX)

    def last_transaction(self) -> bytes:
        self._check_open()
        with self._lock:
            try:
                last = self._conn.execute(sql.SELECT_LAST_TID).fetchone()[0]  # type: ignore[union-attr]
            except sqlite3.Error as e:
                raise self._error(e, "reading the last transaction") from None
        return p64(last) if last else z64

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        self._check_open()
        with self._lock:
            try:
                rows = self._conn.execute(sql.HISTORY, (u64(oid), size)).fetchall()  # type: ignore[union-attr]
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
        """Up to ITERATOR_PAGE transactions with tids in (after, upto], from one snapshot."""
        self._check_open()
        with self._lock:
            conn = self._conn
            assert conn is not None
            try:
                conn.execute(sql.BEGIN_READ)
                try:
                    page = []
                    for tid, user, description, extension, oids in conn.execute(
                        sql.TRANSACTIONS_PAGE, (after, upto, ITERATOR_PAGE)
                    ).fetchall():
                        btid = p64(tid)
                        ids = json_ids(u64(oid) for oid in split_oids(oids))
                        states = {}
                        for zoid, state, stored in conn.execute(self._q.RECORDS_OF_TRANSACTION, (ids, tid)):
                            check_checksum(self.path, zoid, tid, state, stored)
                            states[zoid] = state
                        records = [  # in the order the commit stored them; gone ones left out
                            DataRecord(oid, btid, states[u64(oid)] or None) for oid in split_oids(oids) if u64(oid) in states
                        ]
                        meta = TransactionMeta.extension_from_bytes(extension)
                        page.append(TransactionRecord(btid, user, description, meta, records))
                finally:
                    conn.execute(sql.COMMIT)
            except sqlite3.Error as e:
                raise self._error(e, "iterating transactions") from None
        return page

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
                return {key: str(value) for key, value in self._conn.execute(sql.SELECT_APP_META)}  # type: ignore[union-attr]
            except sqlite3.Error as e:
                raise self._error(e, "reading metadata") from None

    def set_metadata(self, key: str, value: str) -> None:
        check_metadata_key(key)
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.path} is read-only")
        with self._holding_commit_lock("writing metadata"):
            try:
                with write_transaction(self._writer):  # type: ignore[arg-type]
                    self._writer.execute(sql.UPSERT_META, (key, str(value)))  # type: ignore[union-attr]
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
                    progress(f"verifying {self.path}: {checked + unchecked + len(found)} revisions read, {len(found)} damaged")
            conn.execute(sql.COMMIT)
        except sqlite3.Error as e:
            raise self._error(e, "verifying") from None
        finally:
            conn.close()
        if progress is not None:
            extra = f", {unchecked} written before checksums (unchecked)" if unchecked else ""
            progress(f"verified {self.path}: {checked + len(found)} revisions, {len(found)} damaged{extra}")
        return found

    def transaction_log(self, before: bytes | None = None, limit: int = 100) -> list[TransactionInfo]:
        return undo.transaction_log(self, before, limit)

    def find_transactions(
        self, keys: Iterable[str], low: bytes | None = None, high: bytes | None = None
    ) -> dict[str, bytes]:
        return undo.find_transactions(self, keys, low, high)

    def last_pack(self) -> bytes:
        return undo.last_pack(self)

    def __len__(self) -> int:
        self._check_open()
        with self._lock:
            try:
                return undo.count_objects(self._conn)  # type: ignore[arg-type]
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
            with write_transaction(self._writer):  # type: ignore[arg-type]
                self._writer.execute(sql.PRUNE_DECISIONS, (time.time() - decisions.RETENTION,))  # type: ignore[union-attr]
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
        for conn in (self._conn, self._writer):
            if conn is not None:
                conn.close()
        self._conn = self._writer = None


class SQLiteView(CommitBuffer, StorageView):
    """A connection's view of an :class:`SQLiteStorage`, with its own sqlite3 connection."""

    def __init__(self, storage: SQLiteStorage, before: bytes | None) -> None:
        self._storage = storage
        self.before = before
        self._conn: sqlite3.Connection | None = storage._connect()
        self._reading = False  # a read transaction is open (from first load to poll)
        self._own: set[int] = set()  # tids this view committed since its last poll
        self._reset_buffer()
        self._tid: int | None = None  # allocated in vote
        self._locked = False  # we hold the storage's commit lock and SQLite's write lock
        self._prepared = False  # a collection member whose prepared part is committed
        self._deciding = False  # this view's commit will decide a collection's commit
        cached_through = storage._records.tid
        if before is not None:
            self.snapshot = p64(max(u64(before) - 1, 0))
        elif cached_through is not None:
            self.snapshot = cached_through  # poll from there, so the record cache advances too
        else:
            self.snapshot = p64(self._newest())
        if before is None:
            try:
                self.poll()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"<SQLiteView of {self._storage.path!r} at {self.snapshot.hex()}>"

    def __del__(self) -> None:
        # A view dropped without close(): its sqlite3 connection sits in a reference
        # cycle (its statement cache) and would stay open until the cyclic GC runs.
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # closed, or closed with the storage
            raise StorageError(f"storage {self._storage.path} is closed")
        return self._conn

    def _newest(self) -> int:
        try:
            last = self._connection().execute(sql.SELECT_LAST_TID).fetchone()[0]
        except sqlite3.Error as e:
            raise self._storage._error(e, "reading the last transaction") from None
        return last or 0

    def _end_read(self) -> None:
        if self._reading:
            self._reading = False
            self._conn.execute(sql.COMMIT)  # type: ignore[union-attr]

    def _begin_read(self) -> sqlite3.Connection:
        conn = self._connection()
        conn.execute(sql.BEGIN_READ)
        self._reading = True
        return conn

    # -- reads ----------------------------------------------------------------

    def poll(self) -> set[bytes] | None:
        if self.before is not None:
            return set()
        try:
            self._end_read()
            # One statement, so one read transaction: what was committed after the
            # snapshot, newest last (usually nothing, or this view's own commit).
            rows = self._connection().execute(sql.COMMITTED_AFTER, (u64(self.snapshot),)).fetchall()
        except sqlite3.Error as e:
            raise self._storage._error(e, "polling") from None
        own = self._own
        changed = set()
        last = rows[-1][0] if rows else u64(self.snapshot)
        for tid, oids in rows:
            if tid not in own:
                changed.update(split_oids(oids))
        start = self.snapshot
        self.snapshot, self._own = p64(last), set()
        storage = self._storage
        storage._records.advance(start, self.snapshot, changed)
        storage._skip_oids_of(changed)
        return changed

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        records = self._storage._records
        cached = records.get(oid, self.snapshot)
        if cached is not None:
            return cached
        zoid = _unpack64(oid)[0]
        try:
            conn = self._conn if self._reading else self._begin_read()
            row = conn.execute(self._storage._q.LOAD_AT, (zoid, _unpack64(self.snapshot)[0])).fetchone()  # type: ignore[union-attr]
            if row is None:
                self._missing(conn, oid)  # type: ignore[arg-type]
        except sqlite3.DatabaseError as e:
            raise self._storage._read_error(e, zoid) from None
        state, tid, stored = row
        if stored is not None and (
            state.__class__ is not bytes or _crc32(state, zoid ^ tid) - _OFFSET != stored
        ):
            raise damaged(self._storage.path, zoid, tid)
        if not state:  # DELETED: its creation was undone
            raise POSKeyError(oid)
        serial = _pack64(tid)
        records.put(oid, state, serial, self.snapshot)
        return state, serial

    def _missing(self, conn: sqlite3.Connection, oid: bytes) -> None:
        """Raise the right error for an oid with no revision at the snapshot."""
        if not self._storage.keep_history and conn.execute(sql.HAS_REVISION, (u64(oid),)).fetchone():
            raise ReadConflictError(
                "the revision this snapshot needs was replaced by a history-free commit", oid=oid
            )
        raise POSKeyError(oid)

    def load_many(self, oids: Iterable[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        records = self._storage._records
        cached, missing = records.get_many(oids, self.snapshot)
        if not missing:
            return cached
        # The records are keyed by the caller's oid objects and share one serial per
        # tid: no new bytes object per record to allocate, keep and free.
        by_number = {_unpack64(oid)[0]: oid for oid in missing}
        wanted = list(by_number)
        serials: dict[int, bytes] = {}
        found: dict[bytes, tuple[bytes, bytes]] = {}
        load_many_at = self._storage._q.LOAD_MANY_AT
        wanted_deleted: set[int] = set()  # oids whose creation was undone
        snapshot = u64(self.snapshot)
        try:
            conn = self._conn if self._reading else self._begin_read()
            for i in range(0, len(wanted), BATCH):
                ids = json_ids(wanted[i : i + BATCH])
                for zoid, state, tid, stored in conn.execute(load_many_at, (ids, snapshot)):  # type: ignore[union-attr]
                    if stored is not None and (
                        state.__class__ is not bytes or _crc32(state, zoid ^ tid) - _OFFSET != stored
                    ):
                        raise damaged(self._storage.path, zoid, tid)
                    if not state:  # DELETED
                        wanted_deleted.add(zoid)
                        continue
                    serial = serials.get(tid)
                    if serial is None:
                        serial = serials[tid] = _pack64(tid)
                    found[by_number[zoid]] = (state, serial)
        except sqlite3.DatabaseError as e:
            raise self._storage._read_error(e, wanted[0] if len(wanted) == 1 else None) from None
        if not self._storage.keep_history and len(found) < len(wanted):
            for zoid in wanted:  # a replaced revision must not pass for a missing object
                oid = p64(zoid)
                if oid not in found and zoid not in wanted_deleted and conn.execute(sql.HAS_REVISION, (zoid,)).fetchone():  # type: ignore[union-attr]
                    self._missing(conn, oid)  # type: ignore[arg-type]
        records.put_many(found, self.snapshot)
        found.update(cached)
        return found

    def load_serial(self, oid: bytes, serial: bytes) -> bytes:
        zoid, tid = u64(oid), u64(serial)
        try:
            conn = self._conn if self._reading else self._begin_read()
            row = conn.execute(self._storage._q.LOAD_SERIAL, (zoid, tid)).fetchone()  # type: ignore[union-attr]
        except sqlite3.DatabaseError as e:
            raise self._storage._read_error(e, zoid) from None
        if row is not None:
            check_checksum(self._storage.path, zoid, tid, row[0], row[1])
        if row is None or not row[0]:
            raise POSKeyError(oid)
        return row[0]

    def new_oid(self) -> bytes:
        return self._storage.new_oid()

    # -- two-phase commit -----------------------------------------------------

    def tpc_vote(self, resolve: Resolver | None = None) -> set[bytes]:
        meta = self._check_voting()
        if self._locked:
            raise StorageTransactionError("tpc_vote called twice")
        storage = self._storage
        storage._check_open()
        role = commit_role(meta)
        storage._acquire_commit_lock("committing")
        self._locked = True
        writer = storage._writer
        assert writer is not None
        try:
            last = self._begin_write(writer)
            resolved = self._write(writer, last, resolve, None if role.decider else role.decider_home)
            if role.alone:
                pass
            elif role.decider:  # this COMMIT, in tpc_finish, will be the collection's decision
                writer.execute(sql.INSERT_DECISION, (meta.id, self._tid, time.time()))
                decisions.holding(storage._home)
                self._deciding = True
            else:  # a member: the prepared part is durable now, and invisible
                self._prepared = True
                writer.execute(sql.COMMIT)
        except sqlite3.Error as e:
            self._abort_write()
            raise storage._error(e, "voting") from None
        except BaseException:
            self._abort_write()
            raise
        return resolved

    def _begin_write(self, writer: sqlite3.Connection) -> int:
        """Begin the commit's write transaction, once whatever a stopped process
        prepared here is settled; the last committed tid."""
        storage = self._storage
        while True:
            try:
                writer.execute(sql.BEGIN_WRITE)
            except sqlite3.OperationalError as e:
                raise LockTimeoutError(
                    f"could not lock {storage.path} for commit within {storage.commit_lock_timeout:g} s "
                    f"(commit_lock_timeout): {e}"
                ) from None
            last, waiting = writer.execute(sql.LAST_TID_AND_PENDING).fetchone()
            if not waiting:
                return last or 0
            # Settled without the write lock: see sqlite_pending, "Settling".
            writer.execute(sql.ROLLBACK)
            storage._settle()

    def _write(
        self, writer: sqlite3.Connection, last: int, resolve: Resolver | None, decider: str | None
    ) -> set[bytes]:
        """Check conflicts and insert this commit's rows (inside the write transaction);
        with ``decider``, as a prepared part of a collection's commit."""
        stores = self._stores
        # In oid order: the b-tree takes inserts in key order fastest (a commit's oids
        # are often in order already). Big-endian oids sort as their numbers do.
        oids = sorted(stores)

        def moved() -> dict[bytes, bytes]:
            stored = [f"[{u64(oid)},{u64(stores[oid][0])}]" for oid in oids]
            checks = [f"[{u64(oid)},{u64(serial)}]" for oid, serial in self._checks.items() if oid not in stores]
            pairs = "[" + ",".join(stored + checks) + "]"
            found = {p64(zoid): p64(tid or 0) for zoid, tid in writer.execute(sql.SERIAL_MISMATCHES, (pairs,))}
            if found:
                undo.no_serial_when_ended(writer, found, stores, self._checks)
            return found

        q, path = self._storage._q, self._storage.path

        def load_current(oid: bytes) -> bytes:
            state, tid, stored = writer.execute(q.LOAD_CURRENT, (u64(oid),)).fetchone()
            check_checksum(path, u64(oid), tid, state, stored)
            return state

        resolved = self._resolve_conflicts(p64(last or 0), moved, load_current, resolve)  # merged records replace ours
        meta = self._meta
        assert meta is not None
        tid = self._tid = u64(commit_tid(meta, p64(last) if last else None))
        fields = (meta.user, meta.description, meta.extension_bytes(), meta.id)
        storage = self._storage
        # partners 0: the decisions of collection commits live in commit_decisions.
        self._written = insert_commit(writer, tid, fields, stores, oids, storage.keep_history, 0, decider)
        if not storage.keep_history:
            storage._commits_since_prune += 1
            if storage._commits_since_prune >= sql.PRUNE_EVERY:
                storage._commits_since_prune = 0
                writer.execute(sql.PRUNE_REPLACED_TRANSACTIONS, (tid, tid))
        return resolved

    def tpc_finish(self) -> bytes:
        if self._tid is None or self._meta is None or not self._locked:
            raise StorageTransactionError("tpc_finish before tpc_vote")
        storage = self._storage
        tid = self._tid
        if self._prepared:
            self._finish_prepared(tid)
        else:
            try:
                storage._writer.execute(sql.COMMIT)  # type: ignore[union-attr]
            except sqlite3.Error as e:
                self._abort_write()
                raise storage._error(e, "committing") from None
        # Durable from here on: nothing below may raise.
        self._own.add(tid)
        self._unlock()
        try:
            storage._records.committed({oid: data for oid, (_, data) in self._stores.items()}, p64(tid))
            storage._skip_oids_of(self._stores)
            storage._checkpointer.wrote(self._written)
        except Exception as e:  # a thread that cannot start, say: the log is checkpointed at close
            log.warning("%s: after commit %s: %s", storage.path, p64(tid).hex(), e)
        finally:
            self._reset()
        return p64(tid)

    def _finish_prepared(self, tid: int) -> None:
        """Make this member's prepared part visible, the decider having decided. Not
        fsynced: the durable decision redoes it after a power loss."""
        storage = self._storage
        writer = storage._writer
        assert writer is not None
        relax = storage.synchronous == "full"
        try:
            if relax:
                writer.execute(sql.SET_SYNCHRONOUS.format(mode="NORMAL"))
            try:
                with write_transaction(writer):
                    finished = pending.finish(writer, tid, storage.keep_history)
            finally:
                if relax:
                    writer.execute(sql.SET_SYNCHRONOUS.format(mode="FULL"))
        except sqlite3.Error as e:
            # The part stays pending: whoever writes here next commits it, as decided.
            self._unlock()
            self._reset()
            raise storage._error(e, "finishing a prepared commit") from None
        if not finished:
            self._unlock()
            self._reset()
            pending.check_finished(finished, storage.path, tid)

    def tpc_abort(self) -> None:
        self._abort_write()

    def _abort_write(self) -> None:
        """Roll back the write transaction, if any, release the locks, forget the commit.

        A member whose prepared part is committed already asks the decider: the
        transaction package aborts every participant when one of them fails to
        finish, even after the decider committed, and then the part must stay."""
        if self._locked:
            storage = self._storage
            try:
                writer = storage._writer
                if writer is not None and writer.in_transaction:
                    writer.execute(sql.ROLLBACK)
                if self._prepared and writer is not None and self._tid is not None:
                    self._settle_own(writer, self._tid)
            finally:
                self._unlock()
        self._reset()

    def _settle_own(self, writer: sqlite3.Connection, tid: int) -> None:
        """Finish or drop this view's own prepared part as its decider decided."""
        storage, meta = self._storage, self._meta
        assert meta is not None
        role = commit_role(meta)
        try:
            committed = decisions.outcome(role.decider_home or "", meta.id, time.time(), storage.path)
            with write_transaction(writer):
                if committed:
                    pending.finish(writer, tid, storage.keep_history)
                else:
                    pending.drop(writer, tid)
        except (StorageError, sqlite3.Error) as e:  # the next writer settles it
            log.warning("%s: leaving prepared transaction %s to recovery: %s", storage.path, p64(tid).hex(), e)

    def _unlock(self) -> None:
        if self._deciding:
            self._deciding = False
            decisions.released(self._storage._home)
        if self._locked:
            self._locked = False
            self._storage._commit_lock.release()

    def _reset(self) -> None:
        self._reset_buffer()
        self._tid = None
        self._prepared = False
        self._written = 0  # record bytes of the commit being written

    # -- giving back ------------------------------------------------------------

    def release(self) -> None:
        """End the read transaction and any commit; the view stays usable (its next
        load or poll opens what it needs)."""
        self._abort_write()
        if self._conn is not None:
            try:
                self._end_read()
            except sqlite3.Error as e:
                raise self._storage._error(e, "releasing a view") from None

    def close(self) -> None:
        """Abort any commit and close the view's sqlite3 connection now (see
        :meth:`StorageView.close`); the storage stays open. Idempotent."""
        try:
            self._abort_write()
        finally:
            self._reading = False
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            self._storage._views.discard(self)

    _close = close  # the name the storage used before views had a public close
