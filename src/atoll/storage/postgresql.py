"""PostgreSQL storage: one atoll database in one PostgreSQL schema, for many processes
on many machines.

Layout. The tables (see :mod:`atoll.storage.postgresql_sql`, which holds every
statement) are created on first open in the schema named by ``schema`` (default
``atoll``), so several atoll databases can share one PostgreSQL database. The schema
records its version and mode; opening it with the other ``keep_history`` is refused.

Connections. The storage keeps one server session for whole-database work (oids,
history, pack, recovery) and a small pool from which each view takes its sessions.
All sessions run in autocommit and open transactions explicitly.

Snapshots (MVCC). A view reads as of ``snapshot``, the newest tid committed when it
opened or last polled:

* history-preserving: every revision is kept, so a load is "the newest revision of
  the oid with ``tid <= snapshot``", one statement in its own transaction. Rows with
  such a tid never change (until pack), so no read transaction is held open;
* history-free: only the current revision exists, so the view holds a REPEATABLE
  READ, READ ONLY transaction from one poll to the next and PostgreSQL's own MVCC
  keeps the old rows readable. Its first statement reads the last tid, which is the
  snapshot. Commits go through a second session (the read transaction must stay
  open across the view's own commit). The cost: a long idle view delays VACUUM.

``poll()`` is one statement: the last tid, and the oids others wrote in between.
Commits also ``NOTIFY`` a channel, so :meth:`PostgreSQLStorage.wait_for_commit`
wakes idle processes promptly without polling in a loop.

Commits. ``tpc_vote`` opens a transaction and locks the single row of
``commit_lock`` (``SELECT ... FOR UPDATE``): that row lock is the commit lock of
every process on every machine. Under it the view reads the current serials of the
oids it writes, runs :func:`~atoll.storage.commit_buffer.check_conflicts`, allocates a tid later
than the stored last tid, writes every record in one multi-row INSERT, records the
transaction and updates the last tid. A small commit bets that nothing was committed since
its snapshot, the case in which nothing can conflict: it sends ``BEGIN``, the lock
and a write that happens only if the lock row still holds the snapshot's tid in one
pipeline, one round trip (:meth:`PostgreSQLStorage._lock_commit_and_write`; a
collection member's pipeline ends with its ``PREPARE TRANSACTION``); a lost bet writes nothing (a
member's prepared the lock alone, and rolls that back) and the commit goes on under
the lock as above. What comes next depends on the
storage's role in the commit (:func:`~atoll.storage.base.commit_role`):

* alone (no other durable storage takes part): ``tpc_finish`` runs a plain
  ``COMMIT``. No ``PREPARE TRANSACTION``: a crash before the COMMIT rolls the
  transaction back with the session, and the row lock goes with it.
* decider of a collection's commit: the vote also inserts the decision row
  (``commit_decisions``); ``tpc_finish``'s ``COMMIT`` is the collection's decision.
* member: the vote ends with ``PREPARE TRANSACTION gid``. A prepared transaction
  keeps its row locks (so the commit lock stays held, whatever happens to the
  session) until ``tpc_finish`` runs ``COMMIT PREPARED``.

Waiting for the lock is bounded: after ``lock_wait`` seconds the view runs recovery
(below) and waits again, and gives up with StorageError after
``commit_lock_timeout``.

Recovery of prepared transactions left by a crashed process: see
:mod:`atoll.storage.postgresql_recovery` (the gid of each names its owner's session,
the transaction and where its decider keeps the decision). It runs when a storage
opens, when a committer has waited ``lock_wait`` for the commit lock, and on demand
(:meth:`PostgreSQLStorage.recover`); whatever it settles is logged, one line per
prepared transaction. A server with ``max_prepared_transactions = 0`` cannot
PREPARE: opening fails with a message naming the setting, unless
``two_phase=False`` is passed, which never prepares (a member of a collection's
commit then commits in ``tpc_finish`` like a decider, and the collection is no
longer atomic against a crash between the finishes).

Lost sessions. A server restart or a network failure ends every session. Each is
re-established on its next use: the storage's own session (oids, history, ``len``,
recovery) retries a statement once on a new session; a view whose session is lost
takes a new one when it next polls (at the start of every transaction), and a
transaction caught in the middle gets one :class:`~atoll.errors.ConnectionLostError`,
a ConflictError, so the usual retry loop carries on. Nothing acknowledged is lost:
a commit is acknowledged only when ``COMMIT PREPARED`` returned, or, when the
session was lost on the way, once a new session finds the transaction committed.

Housekeeping. Every :data:`PRUNE_EVERY` commits, ``tpc_finish`` removes decision
rows nothing needs any more and, in a history-free database, transaction rows whose
revisions were all replaced (so such a database stays bounded without a pack). It
runs after the commit point: a failure is logged, never raised.

Checksums. Every row of ``object_state`` carries a checksum
(:mod:`atoll.storage.checksum`); loads check it and raise
:class:`~atoll.errors.CorruptRecordError` on a mismatch; :meth:`PostgreSQLStorage.verify`
reads every revision.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from atoll import gcpause
from atoll.errors import (
    CorruptRecordError,
    LockTimeoutError,
    POSKeyError,
    ReadOnlyError,
    StorageError,
)
from atoll.ids import p64, tid_time, u64
from atoll.storage import decisions
from atoll.storage import postgresql_recovery as recovery
from atoll.storage import postgresql_sql as SQL
from atoll.storage import postgresql_undo as undo
from atoll.storage.cache import RecordCache
from atoll.storage.checksum import check as check_checksum
from atoll.storage.options import check_wait
from atoll.storage.postgresql_recovery import rollback_prepared
from atoll.storage.oid_blocks import StaleBlocks
from atoll.storage.postgresql_session import T, _first_line, _lost, _Session, _SessionLost, one_row, one_value
from atoll.storage.postgresql_view import PostgreSQLView
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

__all__ = ["PostgreSQLStorage", "PostgreSQLView", "rollback_prepared"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
#: Commits between two housekeeping runs (decision rows; history-free: replaced
#: transaction rows).
PRUNE_EVERY = 1000
_VERIFY_PAGE = 2000  # revisions per statement of verify()

log = logging.getLogger(__name__)


class PostgreSQLStorage(Storage):
    """A storage kept in a PostgreSQL schema; see the module docstring for the design.

    ``dsn`` is a libpq connection string or ``postgresql://`` URI. ``schema`` names
    the PostgreSQL schema of this database (created on first open). ``two_phase``
    False commits without PREPARE TRANSACTION (for servers that forbid it).
    """

    def __init__(
        self,
        dsn: str,
        *,
        keep_history: bool = True,
        schema: str = "atoll",
        read_only: bool = False,
        two_phase: bool = True,
        commit_lock_timeout: float = 60.0,
        lock_wait: float = 2.0,
        pool_size: int = 8,
        cache_size_bytes: int = 16 << 20,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema {schema!r} must be a lower-case identifier (letters, digits, _)")
        commit_lock_timeout = check_wait("commit_lock_timeout", commit_lock_timeout)
        # 0 would be PostgreSQL's "no lock_timeout": wait forever.
        lock_wait = check_wait("lock_wait", lock_wait, allow_zero=False)
        self._dsn = dsn
        self.schema = schema
        self.keep_history = keep_history
        self.read_only = read_only
        self.two_phase = two_phase
        self.commit_lock_timeout = commit_lock_timeout
        self.lock_wait = lock_wait
        self._pool_size = pool_size
        self._sql = SQL.queries(pg_sql.Identifier(schema).as_string(None))
        self._channel = "atoll_" + hashlib.sha1(schema.encode()).hexdigest()[:20]
        self._lock = threading.RLock()  # guards the admin session, pool and oid block
        self._idle: list[_Session] = []  # pooled sessions, ready for views
        self._sessions: weakref.WeakSet[_Session] = weakref.WeakSet()  # every open one
        self._next_oid = 0  # next oid of the current block ...
        self._oid_limit = 0  # ... and the first oid past it
        self._oid_epoch: str | None = None  # the oid epoch when the block was taken
        self._member_bets = True  # whether a member's vote bets (_lock_commit_and_write)
        self._oid_block_start = 0  # the first oid of the block
        self._stale_blocks = StaleBlocks()  # blocks given up (see atoll.storage.oid_blocks)
        self._listener: psycopg.Connection | None = None  # opened by wait_for_commit
        self._records = RecordCache(cache_size_bytes)  # shared by the views: see cache.py
        self._commits_since_prune = 0  # commits finished since decision rows were pruned
        self._home = decisions.postgresql_home(schema, dsn)
        self._home_ids: dict[str, int] = {}  # decider home -> its row in decision_homes
        self._closed = False
        self.name = self._safe_name(dsn)
        self._admin: _Session | None = self._connect()
        try:
            info = self._admin.conn.info
            self.name = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}?schema={schema}"
            self._sort_key = f"postgresql:{self._server_id()}/{info.dbname}/{schema}"
            if two_phase:
                self._check_prepared_allowed()
            self._open_schema()
            if not read_only:
                self.recover()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- sessions ------------------------------------------------------------------

    def _safe_name(self, dsn: str) -> str:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            return "postgresql (unparsable DSN)"
        params.pop("password", None)
        where = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"postgresql {where} schema={self.schema}"

    def _connect(self) -> _Session:
        """A new session holding a fresh owner lock; StorageError if unreachable."""
        key = secrets.randbits(62) + 1
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
            try:
                conn.execute(SQL.OWNER_LOCK, (key,))
                conn.execute(f"SET lock_timeout = {max(1, int(self.lock_wait * 1000))}")
            except BaseException:
                conn.close()
                raise
        except psycopg.Error as e:
            raise StorageError(f"cannot connect to {self.name}: {_first_line(e)}") from None
        session = _Session(conn, key)
        self._sessions.add(session)
        return session

    def _checkout(self) -> _Session:
        self._check_open()
        with self._lock:
            while self._idle:
                session = self._idle.pop()
                if not session.conn.closed:
                    return session
        return self._connect()

    def _checkin(self, session: _Session | None) -> None:
        if session is None or session.conn.closed:
            return
        try:
            session.rollback()
        except psycopg.Error:
            session.conn.close()
            return
        with self._lock:
            if not self._closed and len(self._idle) < self._pool_size:
                self._idle.append(session)
                return
        session.conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.name} is closed")

    @contextmanager
    def _admin_conn(self) -> Iterator[psycopg.Connection]:
        """The storage's own session, for one thread at a time, made anew if it was
        lost; errors as StorageError (_SessionLost when the session was lost)."""
        self._check_open()
        with self._lock:
            if self._admin is None or _lost(self._admin.conn):
                self._drop_admin()
                self._admin = self._connect()
            conn = self._admin.conn
            try:
                yield conn
            except psycopg.Error as e:
                if _lost(conn):
                    self._session_lost()
                    raise _SessionLost(
                        f"lost the connection to {self.name} ({_first_line(e)}); it is made again on next use"
                    ) from None
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                raise StorageError(f"PostgreSQL error in {self.name}: {_first_line(e)}") from None

    def _admin_call(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on the storage's own session, once more on a new session
        when the first was lost (for work that can safely run twice)."""
        try:
            with self._admin_conn() as conn:
                return work(conn)
        except _SessionLost:
            with self._admin_conn() as conn:
                return work(conn)

    def _drop_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.conn.close()
            except psycopg.Error:
                pass
            self._admin = None

    def _session_lost(self) -> None:
        """A session was found lost: the server most likely dropped every session of
        this process (a restart), so the idle pool and the admin session go too and
        are made anew on their next use."""
        with self._lock:
            idle, self._idle = self._idle, []
            if self._admin is not None and _lost(self._admin.conn):
                self._drop_admin()
            if self._listener is not None and _lost(self._listener):
                self._listener = None
        for session in idle:
            try:
                session.conn.close()
            except psycopg.Error:
                pass

    def _server_id(self) -> str:
        """The server's system identifier (same however it is addressed), else host:port."""
        assert self._admin is not None
        conn = self._admin.conn
        try:
            return str(one_value(conn.execute("SELECT system_identifier FROM pg_control_system()")))
        except psycopg.Error:
            return f"{conn.info.host}:{conn.info.port}"

    def _check_prepared_allowed(self) -> None:
        assert self._admin is not None
        allowed = int(one_value(self._admin.conn.execute(SQL.MAX_PREPARED)))
        if allowed == 0:
            raise StorageError(
                f"{self.name}: the server has max_prepared_transactions = 0, which disables the "
                "two-phase commit atoll uses; as a superuser run "
                "ALTER SYSTEM SET max_prepared_transactions = 10 and restart PostgreSQL "
                "(or open the storage with two_phase=False)"
            )

    def _open_schema(self) -> None:
        """Create the tables on first open, else check mode and version (and migrate)."""
        q = self._sql
        with self._admin_conn() as conn:
            if self.read_only:
                if not one_value(conn.execute(SQL.SCHEMA_EXISTS, (f"{self.schema}.info",))):
                    raise StorageError(f"{self.name}: no atoll database in schema {self.schema!r}")
            else:
                with conn.transaction():
                    # Only when missing: CREATE ... IF NOT EXISTS would still lock the
                    # table against the rows prepared transactions hold.
                    conn.execute(SQL.SCHEMA_CREATE_LOCK, (self.schema,))
                    if not one_value(conn.execute(SQL.SCHEMA_EXISTS, (f"{self.schema}.info",))):
                        conn.execute(q.CREATE_HISTORY_PRESERVING if self.keep_history else q.CREATE_HISTORY_FREE)
                        for key, value in (
                            ("schema_version", str(SQL.SCHEMA_VERSION)),
                            ("keep_history", "1" if self.keep_history else "0"),
                            ("oid_block", str(SQL.OID_BLOCK)),
                        ):
                            conn.execute(q.WRITE_INFO, (key, value))
                    info = dict(conn.execute(q.READ_INFO).fetchall())
                    version = int(info["schema_version"])
                    while version < SQL.SCHEMA_VERSION:
                        for statement in SQL.MIGRATIONS[version]:
                            conn.execute(statement.replace("{s}", pg_sql.Identifier(self.schema).as_string(None)))
                        version += 1
                        conn.execute(q.WRITE_INFO, ("schema_version", str(version)))
            info = dict(conn.execute(q.READ_INFO).fetchall())
        version = int(info["schema_version"])
        if version > SQL.SCHEMA_VERSION:
            raise StorageError(
                f"{self.name}: schema version {version} is newer than this atoll knows "
                f"({SQL.SCHEMA_VERSION}); upgrade atoll"
            )
        if version < 2:  # read-only: the checksum column cannot be added
            self._sql = SQL.queries(pg_sql.Identifier(self.schema).as_string(None), checksums=False)
        stored = info["keep_history"] == "1"
        if stored != self.keep_history:
            kind = "history-preserving" if stored else "history-free"
            raise StorageError(f"{self.name} holds a {kind} database; open it with keep_history={stored}")

    # -- recovery and the commit lock ------------------------------------------------

    def recover(self) -> dict[str, str]:
        """Resolve prepared transactions of this schema whose owning session is gone.

        Returns gid -> ``"committed"`` or ``"rolled back"``. Transactions whose owner
        is alive are left alone; the rule is in :mod:`atoll.storage.postgresql_recovery`.
        Each one settled is logged (a warning: a process stopped during its commit)."""
        outcome = self._admin_call(lambda conn: recovery.recover(conn, self.schema, self._sql, self.name))
        for gid, verb in outcome.items():
            log.warning(
                "%s: %s prepared transaction %s, left by a process that stopped during its commit%s",
                self.name,
                verb,
                gid,
                " (its decider had decided it)" if verb == "committed" else " (its decider holds no decision)",
            )
        return outcome

    def _lock_commit(self, conn: psycopg.Connection) -> int:
        """Begin a transaction on ``conn`` and take the commit lock; the last tid."""
        deadline = time.monotonic() + self.commit_lock_timeout
        # One round trip for both: a simple query (no parameters) may hold two statements.
        begin_and_lock = f"{SQL.BEGIN}; {self._sql.LOCK_COMMIT}"
        while True:
            try:
                locked = conn.execute(begin_and_lock)
                locked.nextset()
                last, epoch = one_row(locked)
                self._check_oid_epoch(epoch)
                return last
            except pg_errors.LockNotAvailable:
                conn.execute("ROLLBACK")
            if self.recover():
                continue  # a crashed committer held it: try again at once
            if time.monotonic() >= deadline:
                with self._admin_conn() as admin:
                    held = recovery.prepared_gids(admin, self.schema)
                by = f" (prepared transactions: {', '.join(held)})" if held else ""
                raise LockTimeoutError(
                    f"{self.name}: could not get the commit lock within {self.commit_lock_timeout:g} s{by} "
                    "(commit_lock_timeout)"
                )

    def _lock_commit_and_write(
        self, conn: psycopg.Connection, params: dict, prepare_as: str | None = None
    ) -> tuple[int, bool]:
        """Begin, take the commit lock and write a small commit in one round trip
        when nothing was committed since ``params["snapshot"]``
        (``WRITE_COMMIT_IF_UNCHANGED_*`` in postgresql_sql); returns the last tid
        and whether it wrote. When it did not, the transaction stays open under the
        lock; a lock that is not free is waited for as :meth:`_lock_commit` does.

        With ``prepare_as`` (a collection member's gid) the write is the member's
        form (``WRITE_PREPARED_IF_UNCHANGED_*``) and the pipeline ends with
        ``PREPARE TRANSACTION``: having written, it is prepared. A lost bet then
        prepared the lock alone: that is rolled back (two WAL flushes for nothing,
        and the lock let go) and the transaction begun again under the lock. So
        members stop betting after a lost bet until a commit finds that it would
        have won (``_member_bets``): under steady contention they lock first."""
        q = self._sql
        if prepare_as is None:
            write = q.WRITE_COMMIT_IF_UNCHANGED_HP if self.keep_history else q.WRITE_COMMIT_IF_UNCHANGED_HF
        else:
            write = q.WRITE_PREPARED_IF_UNCHANGED_HP if self.keep_history else q.WRITE_PREPARED_IF_UNCHANGED_HF
        try:
            with conn.pipeline():
                conn.execute(SQL.BEGIN)
                locked = conn.execute(q.LOCK_COMMIT)
                wrote = conn.execute(write, params)
                if prepare_as is not None:
                    conn.execute(recovery.two_phase("PREPARE TRANSACTION", prepare_as))
        except pg_errors.LockNotAvailable:
            conn.execute("ROLLBACK")
            self.recover()  # a crashed committer may hold it: as _lock_commit does after a wait
            return self._lock_commit(conn), False
        last, epoch = one_row(locked)
        self._check_oid_epoch(epoch)
        if wrote.fetchone() is not None:
            return last, True
        if prepare_as is None:
            return last, False
        conn.execute(recovery.two_phase("ROLLBACK PREPARED", prepare_as))
        return self._lock_commit(conn), False

    # -- the Storage protocol --------------------------------------------------------

    def open_view(self, before: bytes | None = None) -> PostgreSQLView:
        return PostgreSQLView(self, before)

    def new_oid(self) -> bytes:
        self._check_open()
        # Called while a commit serializes, with the garbage collector paused: the
        # waits here (another thread's reservation, the admin session's round trip
        # and its reconnection) let it run.
        gcpause.acquire(self._lock)
        try:
            if self._next_oid >= self._oid_limit:
                # Taken twice if the session is lost on the way: a gap, never a repeat.
                with gcpause.resumed():
                    start, epoch = self._admin_call(lambda conn: one_row(conn.execute(self._sql.NEW_OID_BLOCK)))
                self._next_oid, self._oid_limit, self._oid_epoch = start, start + SQL.OID_BLOCK, epoch
                self._oid_block_start = start
            oid = self._next_oid
            self._next_oid += 1
        finally:
            self._lock.release()
        return p64(oid)

    def _check_oid_epoch(self, epoch: str | None) -> None:
        """At a commit, under the commit lock: if a restore (of any process) wrote
        oids since this process took its oid block (the oid epoch moved), the block
        may hold some of them, and nothing told this process: give the block up
        (see :mod:`atoll.storage.oid_blocks`)."""
        with self._lock:
            if epoch != self._oid_epoch:
                self._give_up_oid_block()
            self._oid_epoch = epoch

    def _give_up_oid_block(self) -> None:
        """(Holding ``_lock``.) The next new_oid() takes a new block."""
        self._next_oid = self._oid_limit
        self._stale_blocks.add(self._oid_block_start, self._oid_limit)

    def _skip_oids_of(self, oids: Iterable[bytes]) -> None:
        """Give up the rest of the oid block if ``oids`` (written by a commit, this
        process's or another's) fall in it: such an oid was not handed out by this
        block, so a copy or import stored it, and the block may hold more of them.
        The next new_oid() takes a block past everything stored (see ADVANCE_OIDS)."""
        with self._lock:
            low, high = self._next_oid, self._oid_limit
            if low >= high:
                return
            lo, hi = p64(low), p64(high)
            if not oids or max(oids) < lo or min(oids) >= hi:  # in C: the usual answer
                return
            if any(lo <= oid < hi for oid in oids):
                self._give_up_oid_block()

    def last_transaction(self) -> bytes:
        return self._admin_call(lambda conn: p64(one_value(conn.execute(self._sql.LAST_TID))))

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        limit = size if self.keep_history else 1
        rows = self._admin_call(lambda conn: conn.execute(self._sql.HISTORY, (u64(oid), limit)).fetchall())
        if not rows:
            raise POSKeyError(oid)
        return [HistoryEntry(p64(tid), tid_time(p64(tid)), user or "", desc or "", length) for tid, length, user, desc in rows]

    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[TransactionRecord]:
        low = u64(start) if start is not None else 0
        high = u64(stop) if stop is not None else 2**63 - 1
        transactions = self._admin_call(
            lambda conn: conn.execute(self._sql.ITERATE_TRANSACTIONS, (low, high), binary=True).fetchall()
        )
        for tid, user, description, extension in transactions:
            rows = self._admin_call(lambda conn: conn.execute(self._sql.RECORDS_OF, (tid,), binary=True).fetchall())
            for zoid, state, stored in rows:
                check_checksum(self.name, zoid, tid, state, stored)
            records = [DataRecord(p64(zoid), p64(tid), state) for zoid, state, _ in rows]
            yield TransactionRecord(p64(tid), user, description, TransactionMeta.extension_from_bytes(extension), records)

    def restore_transactions(self, transactions: Iterable[TransactionRecord]) -> int:
        """See :meth:`Storage.restore_transactions`: the whole batch in one
        PostgreSQL transaction (:mod:`atoll.storage.postgresql_restore`)."""
        from atoll.storage.postgresql_restore import restore_transactions

        return restore_transactions(self, transactions)

    def pack_session(self, pack_tid: bytes) -> PackSession:
        """See :meth:`Storage.pack_session` and :mod:`atoll.storage.postgresql_pack`."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        from atoll.storage.postgresql_pack import PostgreSQLPackSession

        return PostgreSQLPackSession(self, pack_tid)

    def vacuum(self) -> int:
        """See :func:`atoll.storage.postgresql_pack.vacuum`."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        from atoll.storage.postgresql_pack import vacuum

        return vacuum(self)

    def get_metadata(self) -> dict[str, str]:
        with self._admin_conn() as conn:
            return dict(conn.execute(self._sql.READ_APP_INFO).fetchall())

    def set_metadata(self, key: str, value: str) -> None:
        check_metadata_key(key)
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        with self._admin_conn() as conn:
            conn.execute(self._sql.WRITE_INFO, (key, str(value)))

    def verify(self, progress: Progress | None = None) -> list[DamagedRecord]:
        """See :meth:`Storage.verify`: pages of revisions in (oid, tid) order, each
        page in its own statement (commits go on meanwhile)."""
        q = self._sql
        found: list[DamagedRecord] = []
        after: tuple[int, int] = (-1, -1)
        checked = unchecked = 0
        while True:
            rows = self._admin_call(
                lambda conn: conn.execute(q.VERIFY_PAGE, (*after, _VERIFY_PAGE), binary=True).fetchall()
            )
            for zoid, tid, state, stored in rows:
                if stored is None:
                    unchecked += 1
                    continue
                checked += 1
                try:
                    check_checksum(self.name, zoid, tid, state, stored)
                except CorruptRecordError as e:
                    found.append(DamagedRecord(self.name, p64(zoid), p64(tid), e.detail))
            if len(rows) < _VERIFY_PAGE:
                break
            after = (rows[-1][0], rows[-1][1])
            if progress is not None:
                progress(verify_step(self.name, checked + unchecked, len(found)))
        if progress is not None:
            progress(verify_step(self.name, checked + unchecked, len(found), unchecked, finished=True))
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
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        self._admin_call(lambda conn: conn.execute(self._sql.SET_LAST_PACK, (str(u64(pack_tid)),)))

    def __len__(self) -> int:
        query = self._sql.COUNT_HP if self.keep_history else self._sql.COUNT_HF
        return self._admin_call(lambda conn: one_value(conn.execute(query)))

    def get_size(self) -> int:
        return self._admin_call(lambda conn: one_value(conn.execute(SQL.SIZE, (self.schema,))))

    def sort_key(self) -> str:
        return self._sort_key

    def decision_home(self) -> str:
        return self._home

    def _home_id(self, home: str) -> int:
        """The row of ``decision_homes`` naming ``home``, added (committed) if new."""
        found = self._home_ids.get(home)
        if found is None:
            found = self._admin_call(lambda conn: one_value(conn.execute(self._sql.HOME_ID, {"address": home})))
            self._home_ids[home] = found
        return found

    def wait_for_commit(self, timeout: float) -> bytes | None:
        """Block until some process commits to this database, at most ``timeout``
        seconds; the committed tid, or None on timeout. Uses LISTEN/NOTIFY."""
        with self._lock:
            self._check_open()
            if self._listener is None:
                self._listener = self._connect().conn
                self._listener.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(self._channel)))
            listener = self._listener
        try:
            for notify in listener.notifies(timeout=timeout, stop_after=1):
                return p64(int(notify.payload))
        except psycopg.Error as e:
            # A lost listener is made again on the next call; a commit may have been
            # missed meanwhile, so report "something may have changed" at once.
            with self._lock:
                if self._listener is listener:
                    self._listener = None
            try:
                listener.close()
            except psycopg.Error:
                pass
            log.warning("%s: lost the LISTEN session (%s); listening again on the next wait", self.name, _first_line(e))
            return self.last_transaction()
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = list(self._sessions)
            self._idle = []
        for session in sessions:
            session.conn.close()  # prepared transactions survive; recovery resolves them

    # -- used by views -----------------------------------------------------------

    def _finished(self) -> None:
        """Count a commit; every PRUNE_EVERY, run the housekeeping (see the module
        docstring). After the commit point: logs, never raises."""
        with self._lock:
            self._commits_since_prune += 1
            if self._commits_since_prune < PRUNE_EVERY:
                return
            self._commits_since_prune = 0
        try:
            self.housekeeping()
        except Exception as e:  # the commit is durable: its caller must not hear of this
            log.warning("%s: housekeeping after a commit failed (tried again %d commits later): %s", self.name, PRUNE_EVERY, e)

    def housekeeping(self) -> None:
        """Remove decision rows nothing needs any more and, in a history-free database,
        transaction rows whose revisions were all replaced. Runs every
        :data:`PRUNE_EVERY` commits by itself."""

        def prune(conn: psycopg.Connection) -> None:
            conn.execute(self._sql.PRUNE_DECISIONS, (decisions.RETENTION,))
            if not self.keep_history and not self.read_only:
                conn.execute(self._sql.PRUNE_REPLACED_TRANSACTIONS)

        self._admin_call(prune)

    def _notify(self, conn: psycopg.Connection, tid: int) -> None:
        conn.execute(SQL.NOTIFY, (self._channel, str(tid)))
