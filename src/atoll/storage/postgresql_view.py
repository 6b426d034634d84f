"""A connection's view of a PostgreSQL storage: snapshot reads and the commit.

The design (sessions, snapshots, the commit lock, prepared members of a collection
commit) is described in :mod:`atoll.storage.postgresql`, whose storage opens these
views; this module holds the view's reading and committing.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from atoll.errors import (
    ConnectionLostError,
    POSKeyError,
    ReadConflictError,
    StorageError,
    StorageTransactionError,
)
from atoll.ids import p64, u64, z64
from atoll.storage import decisions
from atoll.storage import postgresql_recovery as recovery
from atoll.storage import postgresql_sql as SQL
from atoll.storage.checksum import check as check_checksum
from atoll.storage.checksum import checksum as record_checksum
from atoll.storage.base import (
    commit_tid,
    StorageView,
    Resolver,
    commit_role,
)
from atoll.storage.commit_buffer import CommitBuffer, moved_serials
from atoll.storage.postgresql_session import T, _first_line, _lost, _Session, one_row, one_value

if TYPE_CHECKING:
    from atoll.storage.postgresql import PostgreSQLStorage

__all__ = ["PostgreSQLView"]

# The storage's logger: what a view logs is about its storage.
log = logging.getLogger("atoll.storage.postgresql")


#: A commit with at most this many bytes of records takes the commit lock and
#: writes in one round trip (see ``_lock_commit_and_write``), betting that nothing
#: was committed since its snapshot; a larger one locks first, so that a lost bet
#: never sends many records twice.
ONE_TRIP_BYTES = 64 << 10


def _checksums(zoids: list[int], datas: list[bytes | None], tid: int) -> list[int]:
    return [record_checksum(zoid, tid, data) for zoid, data in zip(zoids, datas)]


class PostgreSQLView(CommitBuffer, StorageView):
    """A connection's view of a :class:`PostgreSQLStorage` (see the module docstring)."""

    _storage: PostgreSQLStorage

    def __init__(self, storage: PostgreSQLStorage, before: bytes | None) -> None:
        self._storage = storage
        self._sql = storage._sql
        self.before = before
        self._closed = False
        self._load_session: _Session | None = storage._checkout()
        self._store_session: _Session | None = None  # history-free: opened on first commit
        self._snapshot_open = False  # history-free: a REPEATABLE READ transaction is open
        self._own: list[int] = []  # tids this view committed since its last poll
        self._reset_buffer()
        self._tid: int | None = None  # allocated in vote
        self._gid: str | None = None  # of the prepared transaction, between vote and finish
        self._owner_key = 0  # owner lock of the session that prepared it
        self._deciding = False  # this view's COMMIT will decide a collection's commit
        if before is not None:
            self.snapshot = p64(u64(before) - 1) if before != z64 else z64
        else:
            try:
                self.snapshot = p64(self._reading(self._begin_snapshot))
                cached_through = storage._records.tid
                if cached_through is None or cached_through < self.snapshot:
                    # Poll from the record cache's tid, so that the cache advances too.
                    self.snapshot = cached_through or self.snapshot
                    self.poll()
            except BaseException:
                self.release()
                raise

    @property
    def _conn(self) -> psycopg.Connection:
        """The reading session; a released view takes a new one on its next use."""
        if self._closed:
            raise StorageError(f"this view of {self._storage.name} is closed")
        self._storage._check_open()
        if self._load_session is None:
            self._load_session = self._storage._checkout()
        if not (self._snapshot_open or self._storage.keep_history or self.before is not None):
            # History-free, after release: a new read transaction. It can be newer than
            # the snapshot; load() then reports revisions it cannot see as conflicts.
            self._load_session.conn.execute(SQL.BEGIN_SNAPSHOT)
            self._snapshot_open = True
        return self._load_session.conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg errors as StorageError; a lost session as ConnectionLostError, after
        dropping the view's sessions (its next use takes new ones)."""
        try:
            yield
        except psycopg.Error as e:
            if self._session_was_lost():
                raise ConnectionLostError(
                    f"lost the connection to {self._storage.name} ({_first_line(e)}); nothing of this "
                    "transaction was committed: retry it"
                ) from None
            raise StorageError(f"PostgreSQL error in {self._storage.name}: {_first_line(e)}") from None

    def _session_was_lost(self) -> bool:
        """If one of the view's sessions was lost, drop both and say so."""
        sessions = (self._load_session, self._store_session)
        if not any(s is not None and _lost(s.conn) for s in sessions):
            return False
        for session in sessions:
            if session is not None:
                try:
                    session.conn.close()
                except psycopg.Error:
                    pass
        self._load_session = self._store_session = None
        self._snapshot_open = False
        self._storage._session_lost()
        return True

    def _reading(self, work: Callable[[], T]) -> T:
        """``work()`` under :meth:`_errors`, once more on new sessions when the first
        were lost: a read at a fixed snapshot tid gives the same answer on any session
        (history-free: a newer read transaction is caught by the serial checks)."""
        try:
            with self._errors():
                return work()
        except ConnectionLostError:
            if self._tid is not None:  # voted: the commit's session is gone with it
                raise
            with self._errors():
                return work()

    def _begin_snapshot(self) -> int:
        """Fix the view's snapshot; the tid it stands for."""
        return one_value(self._conn.execute(self._sql.LAST_TID))

    # -- reading ---------------------------------------------------------------

    def poll(self) -> set[bytes] | None:
        if self.before is not None:
            return set()

        def poll_once() -> tuple[int, list[int]]:
            if self._snapshot_open:
                self._conn.execute("COMMIT")  # the next statement starts a new snapshot
                self._snapshot_open = False
            return one_row(self._conn.execute(self._sql.POLL, {"since": u64(self.snapshot), "own": self._own}))

        tid, changed = self._reading(poll_once)
        start = self.snapshot
        self.snapshot, self._own = p64(tid), []
        changed_oids = {p64(zoid) for zoid in changed}
        storage = self._storage
        storage._records.advance(start, self.snapshot, changed_oids)
        storage._skip_oids_of(changed_oids)
        return changed_oids

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        records = self._storage._records
        cached = records.get(oid, self.snapshot)
        if cached is not None:
            return cached
        zoid = u64(oid)
        if self._storage.keep_history:
            row = self._reading(lambda: self._conn.execute(self._sql.LOAD_HP, (zoid, u64(self.snapshot)), binary=True).fetchone())
        else:
            row = self._reading(lambda: self._conn.execute(self._sql.LOAD_HF, (zoid,), binary=True).fetchone())
        if row is None or row[0] is None:
            raise POSKeyError(oid)
        state, tid, stored = row
        serial = p64(tid)
        if serial > self.snapshot:
            raise ReadConflictError("the revision this snapshot needs was already discarded", oid=oid)
        check_checksum(self._storage.name, zoid, tid, state, stored)
        records.put(oid, state, serial, self.snapshot)
        return state, serial

    def load_many(self, oids: Iterable[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        records = self._storage._records
        cached, missing = records.get_many(oids, self.snapshot)
        # Keyed by the caller's oid objects, one serial per tid (as in sqlite.py).
        by_number = {u64(oid): oid for oid in missing}
        wanted = list(by_number)
        if not wanted:
            return cached
        if self._storage.keep_history:
            rows = self._reading(
                lambda: self._conn.execute(self._sql.LOAD_MANY_HP, (wanted, u64(self.snapshot)), binary=True).fetchall()
            )
        else:
            rows = self._reading(lambda: self._conn.execute(self._sql.LOAD_MANY_HF, (wanted,), binary=True).fetchall())
        name = self._storage.name
        found = {}
        serials: dict[int, bytes] = {}
        for zoid, state, tid, stored in rows:
            if state is None:
                continue
            serial = serials.get(tid)
            if serial is None:
                serial = serials[tid] = p64(tid)
                if serial > self.snapshot:
                    raise ReadConflictError("the revision this snapshot needs was already discarded", oid=p64(zoid))
            check_checksum(name, zoid, tid, state, stored)
            found[by_number[zoid]] = (state, serial)
        records.put_many(found, self.snapshot)
        found.update(cached)
        return found

    def load_serial(self, oid: bytes, serial: bytes) -> bytes:
        params = (u64(oid), u64(serial))

        def load() -> tuple | None:
            row = self._conn.execute(self._sql.LOAD_SERIAL, params, binary=True).fetchone()
            if row is None and not self._storage.keep_history:
                # Not in this view's snapshot (history-free): it may be newer than it.
                row = self._store_conn().execute(self._sql.LOAD_SERIAL, params, binary=True).fetchone()
            return row

        row = self._reading(load)
        if row is None or row[0] is None:
            raise POSKeyError(oid)
        check_checksum(self._storage.name, params[0], params[1], row[0], row[1])
        return row[0]

    def new_oid(self) -> bytes:
        return self._storage.new_oid()

    # -- committing ------------------------------------------------------------

    def _store_conn(self) -> psycopg.Connection:
        if self._storage.keep_history:
            return self._conn  # no read transaction to protect: one session does both
        if self._closed:
            raise StorageError(f"this view of {self._storage.name} is closed")
        if self._store_session is None:
            self._store_session = self._storage._checkout()
        return self._store_session.conn

    def _store_owner(self) -> int:
        session = self._load_session if self._storage.keep_history else self._store_session
        assert session is not None
        return session.owner_key

    def tpc_vote(self, resolve: Resolver | None = None) -> set[bytes]:
        meta = self._check_voting()
        if self._tid is not None:
            raise StorageTransactionError("tpc_vote called twice")
        storage, q = self._storage, self._sql
        role = commit_role(meta)
        prepare = not role.decider and storage.two_phase
        try:
            with self._errors():
                home_id = 0
                if prepare:
                    assert role.decider_home is not None  # a member's decider is durable
                    home_id = storage._home_id(role.decider_home)
                conn = self._store_conn()
                txn_key = recovery.txn_key(meta.id)
                zoids = [u64(oid) for oid in self._stores]
                datas = [data or None for _, data in self._stores.values()]  # DELETED: NULL
                deciding = not role.alone and role.decider  # the COMMIT in tpc_finish decides
                params = {
                    "zoids": zoids, "datas": datas, "user": meta.user, "description": meta.description,
                    "extension": meta.extension_bytes(), "txn_key": txn_key,
                    "decision": meta.id if deciding else None, "channel": storage._channel,
                }
                gid = None
                if prepare:
                    self._owner_key = self._store_owner()
                    gid = recovery.gid(storage.schema, self._owner_key, meta.id, home_id)
                if self._fits_one_trip(zoids, datas) and (gid is None or storage._member_bets):
                    tid = u64(commit_tid(meta, self.snapshot))
                    params.update(
                        snapshot=u64(self.snapshot), tid=tid, sums=_checksums(zoids, datas, tid),
                        epoch=storage._oid_epoch,
                    )
                    # Before the round trip: whatever stops a member's vote once its
                    # PREPARE ran on the server, tpc_abort must roll back what it prepared.
                    self._gid = gid
                    last, written = storage._lock_commit_and_write(conn, params, gid)
                    if not written:
                        self._gid = None  # nothing prepared: a lost bet's was rolled back
                else:
                    last, written = storage._lock_commit(conn), False
                if gid is not None:
                    # A member's lost bet costs two WAL flushes (see _lock_commit_and_write):
                    # after one, members bet again once a commit shows it would have won.
                    storage._member_bets = written or last <= u64(self.snapshot)
                resolved: set[bytes] = set()
                if not written:  # under the lock: check, choose the tid, write
                    resolved = self._check_conflicts(conn, p64(last), resolve)
                    tid = u64(commit_tid(meta, max(p64(last), self.snapshot)))
                    datas = [data or None for _, data in self._stores.values()]  # resolved ones merged
                    sums = _checksums(zoids, datas, tid)
                    params.update(tid=tid, datas=datas, sums=sums)
                    if zoids and max(zoids) >= storage._oid_limit:  # else within this process's block
                        conn.execute(q.ADVANCE_OIDS, {"oid": max(zoids)})
                    if gid is None:
                        conn.execute(q.WRITE_COMMIT_HP if storage.keep_history else q.WRITE_COMMIT_HF, params)
                    else:
                        with conn.pipeline():
                            conn.execute(q.WRITE_PREPARED_HP if storage.keep_history else q.WRITE_PREPARED_HF, params)
                            conn.execute(recovery.two_phase("PREPARE TRANSACTION", gid))
                            self._gid = gid
                if deciding:
                    decisions.holding(storage._home)
                    self._deciding = True
        except BaseException:
            session = self._store_session if not storage.keep_history else self._load_session
            if session is not None:
                self._rollback(session.conn)
            raise
        self._tid = tid
        storage._skip_oids_of(self._stores)
        return resolved

    def _fits_one_trip(self, zoids: list[int], datas: list[bytes | None]) -> bool:
        """Whether a commit may bet on writing with the lock
        (``_lock_commit_and_write``): not from a historical view, not an oid past
        this process's block (the counter must move first), small enough to send
        twice if the bet is lost, and no new object's oid from a block given up
        (it must be checked: :mod:`atoll.storage.oid_blocks`)."""
        storage = self._storage
        return (
            self.before is None
            and (not zoids or max(zoids) < storage._oid_limit)
            and sum(len(data or b"") for data in datas) <= ONE_TRIP_BYTES
            and not storage._stale_blocks.hold_created(self._stores)
        )

    def _check_conflicts(self, conn: psycopg.Connection, last: bytes, resolve: Resolver | None) -> set[bytes]:
        """The shared conflict check, under the commit lock; merged records replace ours."""
        q = self._sql

        def moved() -> dict[bytes, bytes]:
            oids = [u64(oid) for oid in set(self._stores) | set(self._checks)]
            query = q.CURRENT_SERIALS_HP if self._storage.keep_history else q.CURRENT_SERIALS_HF
            current = {p64(z): p64(t) for z, t in conn.execute(query, (oids,))}
            return moved_serials(self._stores, self._checks, lambda oid: current.get(oid, z64))

        def load_current(oid: bytes) -> bytes:
            state, tid, stored = one_row(conn.execute(q.LOAD_CURRENT, (u64(oid),), binary=True))
            check_checksum(self._storage.name, u64(oid), tid, state, stored)
            return state

        return self._resolve_conflicts(last, moved, load_current, resolve)

    def _rollback(self, conn: psycopg.Connection) -> None:
        try:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()  # the server ends the transaction with the session

    def tpc_finish(self) -> bytes:
        """See :meth:`StorageView.tpc_finish`. Raises only when the commit did not
        happen; whatever fails once it is durable (the NOTIFY, housekeeping) is
        logged."""
        if self._tid is None or self._meta is None:
            raise StorageTransactionError("tpc_finish before tpc_vote")
        tid, storage = self._tid, self._storage
        try:
            try:
                conn = self._store_conn()
                if self._gid is not None:
                    with conn.pipeline():
                        conn.execute(recovery.two_phase("COMMIT PREPARED", self._gid))
                        storage._notify(conn, tid)
                else:
                    conn.execute("COMMIT")  # its NOTIFY was sent in the transaction
            except (psycopg.Error, StorageError) as e:
                self._finish_again(e, tid)  # returns only if the commit happened
        finally:
            self._undecide()
        self._own.append(tid)
        try:
            storage._records.committed({oid: data for oid, (_, data) in self._stores.items()}, p64(tid))
        finally:
            self._reset()
        storage._finished()
        return p64(tid)

    def _finish_again(self, error: BaseException, tid: int) -> None:
        """tpc_finish's COMMIT failed or went unanswered (a lost session, most likely):
        find out on another session whether the transaction committed, committing it
        there if it is still prepared. Returns if it committed; raises if not."""
        storage, gid, owner = self._storage, self._gid, self._owner_key
        if isinstance(error, psycopg.Error):
            self._session_was_lost()

        def settle(conn: psycopg.Connection) -> bool:
            if gid is not None and conn.execute(SQL.IS_PREPARED, (gid,)).fetchone() is not None:
                # Hold the owner lock meanwhile, so recovery elsewhere leaves it alone.
                locked = one_value(conn.execute(SQL.TRY_OWNER_LOCK, (owner,)))
                try:
                    conn.execute(recovery.two_phase("COMMIT PREPARED", gid))
                except pg_errors.UndefinedObject:
                    pass  # resolved meanwhile: the row below tells how
                finally:
                    if locked:
                        conn.execute(SQL.OWNER_UNLOCK, (owner,))
            return conn.execute(self._sql.TRANSACTION_EXISTS, (tid,)).fetchone() is not None

        try:
            committed = storage._admin_call(settle)
        except StorageError as e:
            self._reset()
            raise StorageError(
                f"{storage.name}: cannot tell whether transaction {p64(tid).hex()} committed: "
                f"{_first_line(error)}; then {e}"
            ) from None
        if not committed:
            self._reset()
            raise ConnectionLostError(
                f"{storage.name}: transaction {p64(tid).hex()} did not commit ({_first_line(error)}); retry it"
            )
        log.warning("%s: committed transaction %s on a new session after: %s", storage.name, p64(tid).hex(), _first_line(error))
        try:
            storage._admin_call(lambda conn: storage._notify(conn, tid))
        except StorageError:
            pass  # waiters time out and poll

    def tpc_abort(self) -> None:
        if self._meta is None:
            return
        try:
            if self._gid is not None:
                # The transaction package aborts every participant when one fails to
                # finish, even after the decider committed: then this part must stay.
                role = commit_role(self._meta)
                if decisions.outcome(role.decider_home or "", self._meta.id, time.time(), self._storage.name):
                    with self._errors():
                        self._store_conn().execute(recovery.two_phase("COMMIT PREPARED", self._gid))
                else:
                    self._abort_prepared()
            else:
                session = self._store_session if not self._storage.keep_history else self._load_session
                if session is not None:
                    self._rollback(session.conn)
        finally:
            self._reset()

    def _abort_prepared(self) -> None:
        gid, owner = self._gid, self._owner_key
        assert gid is not None  # called for a prepared part only
        statement = recovery.two_phase("ROLLBACK PREPARED", gid)
        try:
            with self._errors():
                try:
                    self._store_conn().execute(statement)
                except pg_errors.UndefinedObject:
                    pass  # the vote stopped before its PREPARE ran: nothing to roll back
        except ConnectionLostError:
            # The prepared transaction outlives the session: roll it back from another.
            def rollback(conn: psycopg.Connection) -> None:
                if conn.execute(SQL.IS_PREPARED, (gid,)).fetchone() is not None:
                    locked = one_value(conn.execute(SQL.TRY_OWNER_LOCK, (owner,)))
                    try:
                        conn.execute(statement)
                    except pg_errors.UndefinedObject:
                        pass
                    finally:
                        if locked:
                            conn.execute(SQL.OWNER_UNLOCK, (owner,))

            self._storage._admin_call(rollback)

    def _undecide(self) -> None:
        if self._deciding:
            self._deciding = False
            decisions.released(self._storage._home)

    def _reset(self) -> None:
        self._undecide()
        self._reset_buffer()
        self._tid = None
        self._gid = None

    def release(self) -> None:
        if self._meta is not None and not self._storage._closed:
            try:
                self.tpc_abort()
            except StorageError as e:  # its session is gone: recovery rolls it back
                log.warning("%s: releasing a view: %s", self._storage.name, e)
        self._reset()
        storage = self._storage
        for session in (self._load_session, self._store_session):
            storage._checkin(session)
        self._load_session = self._store_session = None
        self._snapshot_open = False

    def close(self) -> None:
        """Release the view and close its sessions instead of pooling them (see
        :meth:`StorageView.close`)."""
        if self._closed:
            return
        try:
            if self._meta is not None and not self._storage._closed:
                try:
                    self.tpc_abort()
                except StorageError as e:  # its session is gone: recovery rolls it back
                    log.warning("%s: closing a view: %s", self._storage.name, e)
        finally:
            self._closed = True
            self._reset()
            self._snapshot_open = False
            sessions = (self._load_session, self._store_session)
            self._load_session = self._store_session = None
            for session in sessions:
                if session is not None:
                    session.conn.close()
