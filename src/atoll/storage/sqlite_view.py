"""A connection's view of an SQLite storage: snapshot reads and the commit.

The design (one file, WAL, snapshots as read transactions, the commit lock, pending
parts of a collection commit) is described in :mod:`atoll.storage.sqlite`, whose
storage opens these views; this module holds the view's reading and committing.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Iterable

from atoll.errors import (
    POSKeyError,
    ReadConflictError,
    StorageError,
    StorageTransactionError,
)
from atoll.ids import p64, u64
from atoll.storage import decisions
from atoll.storage import sqlite_pending as pending
from atoll.storage import sqlite_sql as sql
from atoll.storage.checksum import check as check_checksum
from atoll.storage.checksum import damaged
from atoll.storage import sqlite_undo as undo
from atoll.storage.base import commit_tid, StorageView, Resolver, commit_role
from atoll.storage.commit_buffer import CommitBuffer
from atoll.storage.sqlite_write import begin_commit, insert_commit, write_transaction
from atoll.storage.sqlite_rows import _OFFSET, BATCH, _crc32, _pack64, _unpack64, json_ids, split_oids

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["SQLiteView"]

# The storage's logger: what a view logs is about its storage.
log = logging.getLogger("atoll.storage.sqlite")


class SQLiteView(CommitBuffer, StorageView):
    """A connection's view of an :class:`SQLiteStorage`, with its own sqlite3 connection."""

    _storage: SQLiteStorage

    def __init__(self, storage: SQLiteStorage, before: bytes | None) -> None:
        self._storage = storage
        self.before = before
        self._conn = storage._connect()  # use through _connection() but where _reading
        self._closed = False  # set by close(), also when the storage closes
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
        if self._closed:  # closed, or closed with the storage
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
            self._conn.execute(sql.COMMIT)

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
            row = conn.execute(self._storage._q.LOAD_AT, (zoid, _unpack64(self.snapshot)[0])).fetchone()
            if row is None:
                self._missing(conn, oid)
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
                for zoid, state, tid, stored in conn.execute(load_many_at, (ids, snapshot)):
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
                if oid not in found and zoid not in wanted_deleted and conn.execute(sql.HAS_REVISION, (zoid,)).fetchone():
                    self._missing(conn, oid)
        records.put_many(found, self.snapshot)
        found.update(cached)
        return found

    def load_serial(self, oid: bytes, serial: bytes) -> bytes:
        zoid, tid = u64(oid), u64(serial)
        try:
            conn = self._conn if self._reading else self._begin_read()
            row = conn.execute(self._storage._q.LOAD_SERIAL, (zoid, tid)).fetchone()
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
        if storage.keep_history:
            # The snapshot's read transaction ends here (reads name their tid; the
            # next load opens another): a reader still in the log keeps SQLite from
            # starting the log over (see sqlite_checkpoint). A history-free file
            # keeps it: conflict resolution may need a revision that a newer commit
            # deleted, which only this snapshot still sees.
            try:
                self._end_read()
            except sqlite3.Error as e:
                raise storage._error(e, "voting") from None
        storage._acquire_commit_lock("committing")
        self._locked = True
        writer = storage._writer
        assert writer is not None
        try:
            last = begin_commit(storage, writer, "commit")
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
        self._written = insert_commit(
            writer, tid, fields, stores, oids, storage.keep_history, 0, decider, storage._oid_limit
        )
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
        writer = storage._writer
        assert writer is not None  # voted: the storage is writable
        if self._prepared:
            self._finish_prepared(tid)
        else:
            try:
                writer.execute(sql.COMMIT)
            except sqlite3.Error as e:
                self._abort_write()
                raise storage._error(e, "committing") from None
        # Durable from here on: nothing below may raise.
        self._own.add(tid)
        storage._checkpointer.finish(writer)
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
        if not self._closed:
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
            self._closed = True
            self._conn.close()
            self._storage._views.discard(self)

    _close = close  # the name the storage used before views had a public close
