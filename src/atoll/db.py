"""DB: a database, its connection pools, and its place in a collection.

A ``DB`` wraps one storage. Connections come from pools (one for current
connections, one per historical point) so that their caches survive between uses.
Several DBs sharing one ``databases`` dict form a *multi-database collection*: their
connections can be bound together and objects may refer across them.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Mapping

import transaction
from persistent.mapping import PersistentMapping

from atoll.classes import ClassPolicy
from atoll.conflict import resolve
from atoll.arguments import check_count, check_oid, check_seconds, pack_time
from atoll.connection import Connection
from atoll.errors import ConflictError, POSError, POSKeyError, StorageError
from atoll.ids import ROOT_OID, next_tid, tid_from_time, tid_repr, z64
from atoll.serialize import make_record
from atoll.storage.base import PackStats, Progress, Storage, TransactionMeta

__all__ = ["DB"]

logger = logging.getLogger(__name__)


class _Pool:
    """Idle connections of one kind, most recently used first.

    ``size`` is a soft limit: more connections may be open at once (with a warning),
    but no more than ``size`` are kept idle. Idle ones older than ``timeout`` go.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.idle: list[tuple[float, Connection]] = []  # (time returned, connection)
        self.in_use = 0

    def take(self) -> Connection | None:
        self.in_use += 1
        return self.idle.pop()[1] if self.idle else None

    def give_back(self, connection: Connection, now: float) -> list[Connection]:
        """Keep ``connection``; return the connections to discard."""
        self.in_use -= 1
        self.idle.append((now, connection))
        return self._trim(now)

    def _trim(self, now: float) -> list[Connection]:
        drop = [c for t, c in self.idle if now - t > self.timeout]
        keep = [(t, c) for t, c in self.idle if now - t <= self.timeout]
        excess = len(keep) - self.size
        if excess > 0:
            drop.extend(c for _, c in keep[:excess])
            keep = keep[excess:]
        self.idle = keep
        return drop

    def clear(self) -> list[Connection]:
        connections = [c for _, c in self.idle]
        self.idle = []
        return connections


class DB:
    """A database: see the module docstring and ``docs/`` for the whole story."""

    def __init__(
        self,
        storage: Storage | str | os.PathLike | None = None,
        *,
        database_name: str = "unnamed",
        databases: dict[str, DB] | None = None,
        xrefs: bool = True,
        pool_size: int = 7,
        pool_timeout: float = 1 << 31,
        cache_size: int = 400,
        cache_size_bytes: int = 0,
        historical_pool_size: int = 3,
        historical_cache_size: int = 1000,
        historical_cache_size_bytes: int = 0,
        historical_timeout: float = 300,
        class_aliases: Mapping[str, str] | None = None,
        allowed_globals: Iterable[str] = (),
    ) -> None:
        _check_db_arguments(
            pool_size=pool_size, cache_size=cache_size, cache_size_bytes=cache_size_bytes,
            historical_pool_size=historical_pool_size, historical_cache_size=historical_cache_size,
            historical_cache_size_bytes=historical_cache_size_bytes,
            pool_timeout=pool_timeout, historical_timeout=historical_timeout,
        )
        if databases is None:
            databases = {}
        if database_name in databases:
            raise ValueError(f"database_name {database_name!r} already in databases")
        # What records may name, and old class names mapped to new ones
        # (atoll.classes, docs/security.md); checked before anything is opened.
        self.class_policy = ClassPolicy(
            database_name,
            class_aliases,
            allowed_globals,
            factory=lambda connection, module, name: self.classFactory(connection, module, name),
        )
        self.resolve_conflict = functools.partial(resolve, policy=self.class_policy)
        opened_here = not isinstance(storage, Storage)
        self.storage: Storage
        if isinstance(storage, Storage):
            self.storage = storage
        elif storage is None:
            from atoll.storage.memory import MemoryStorage

            self.storage = MemoryStorage()
        else:
            from atoll.storage.targets import open_storage

            self.storage = open_storage(storage)
        self.database_name = database_name
        self.xrefs = xrefs
        self.cache_size = cache_size
        self.cache_size_bytes = cache_size_bytes
        self.historical_cache_size = historical_cache_size
        self.historical_cache_size_bytes = historical_cache_size_bytes
        self._lock = threading.RLock()  # guards the pools
        self._pool = _Pool(pool_size, pool_timeout)
        self._historical_size = historical_pool_size
        self._historical_timeout = historical_timeout
        self._historical: dict[bytes, _Pool] = {}
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()  # every one made
        self._closed = False
        self._members: set[str] | None = None  # collection_members(), read on first use
        try:
            self._create_root()
        except BaseException:
            if opened_here:
                self.storage.close()
            raise
        self.databases = databases
        databases[database_name] = self
        _warn_if_not_all_durable(self)

    def __repr__(self) -> str:
        return f"<DB {self.database_name!r} at {id(self):x} on {type(self.storage).__name__}>"

    def _create_root(self) -> None:
        view = self.storage.open_view()
        try:
            try:
                view.load(ROOT_OID)
                return
            except POSKeyError:
                if self.storage.read_only:
                    return
            view.tpc_begin(TransactionMeta(description="initial database creation"))
            try:
                view.store(ROOT_OID, z64, make_record(PersistentMapping()))
                view.tpc_vote()
                view.tpc_finish()
            except ConflictError:
                view.tpc_abort()  # another process created it first
            except BaseException:
                view.tpc_abort()
                raise
        finally:
            view.release()

    # -- connections ----------------------------------------------------------------

    def open(
        self,
        transaction_manager: Any = None,
        at: datetime.datetime | bytes | None = None,
        before: datetime.datetime | bytes | None = None,
    ) -> Connection:
        """A connection, from the pool when one is idle.

        ``at``/``before`` (a datetime or 8-byte tid) open a read-only connection to
        the state at or just before that moment.
        """
        before_tid = _before_tid(at, before)
        if before_tid is not None:
            last = self.lastTransaction()
            if before_tid > next_tid(last):
                raise ValueError(
                    f"cannot open a historical connection to {self.database_name!r} in the future: "
                    f"the newest transaction is {tid_repr(last)}"
                )
        return self._open_connection(transaction_manager, before_tid, None)

    def _open_connection(
        self, transaction_manager: Any, before: bytes | None, connections: dict[str, Connection] | None
    ) -> Connection:
        if self._closed:
            raise StorageError(f"database {self.database_name!r} is closed")
        with self._lock:
            if before is None:
                pool = self._pool
            else:
                pool = self._historical.setdefault(before, _Pool(self._historical_size, self._historical_timeout))
            connection = pool.take()
            if before is None and pool.in_use > pool.size:
                logger.warning(
                    "database %r has %d connections open, more than its pool size %d",
                    self.database_name, pool.in_use, pool.size,
                )
        try:
            if connection is None:
                if before is None:
                    connection = Connection(self, self.cache_size, self.cache_size_bytes)
                else:
                    connection = Connection(
                        self, self.historical_cache_size, self.historical_cache_size_bytes, before
                    )
                with self._lock:
                    self._connections.add(connection)
            connection._open(transaction_manager or transaction.manager, connections, time.time())
        except BaseException:
            self._open_failed(pool, before, connection, connections)
            raise
        return connection

    def _open_failed(
        self, pool: _Pool, before: bytes | None, connection: Connection | None,
        connections: dict[str, Connection] | None,
    ) -> None:
        """Undo what a failed open did: the pool's count of connections in use (or
        later opens would warn of more connections than the pool holds), the group's
        entry, and the connection itself (its view may be broken)."""
        with self._lock:
            pool.in_use -= 1
            if before is not None and not pool.idle and not pool.in_use:
                self._historical.pop(before, None)
        if connection is not None:
            if connections is not None and connections.get(self.database_name) is connection:
                del connections[self.database_name]
            try:
                connection._shut()
            except POSError as exc:
                logger.warning("discarding %r after a failed open: %s", connection, exc)

    def _return_connection(self, connection: Connection, reusable: bool = True) -> None:
        with self._lock:
            if self._closed:
                drop = [connection]
            else:
                before = connection.before
                pool = self._pool if before is None else self._historical[before]
                if reusable:
                    drop = pool.give_back(connection, time.time())
                else:
                    pool.in_use -= 1
                    drop = [connection]
                if before is not None and not pool.idle and not pool.in_use:
                    del self._historical[before]
        self._discard(drop)

    def _park_connection(self, connection: Connection) -> None:
        """A group member closed with its group's first connection: no longer in use,
        yet not idle in the pool either (the group keeps it, to reopen with it)."""
        with self._lock:
            if self._closed:
                return
            before = connection.before
            pool = self._pool if before is None else self._historical[before]
            pool.in_use -= 1
            if before is not None and not pool.idle and not pool.in_use:
                del self._historical[before]

    def _reopen_in_group(
        self, connection: Connection, transaction_manager: Any, connections: dict[str, Connection], now: float
    ) -> None:
        """Reopen a parked member with its group's first connection; a member of a
        database closed meanwhile leaves the group instead."""
        connection._parked = False
        with self._lock:
            if self._closed:
                del connections[self.database_name]
                return
            before = connection.before
            if before is None:
                pool = self._pool
            else:
                pool = self._historical.setdefault(before, _Pool(self._historical_size, self._historical_timeout))
            pool.in_use += 1
        try:
            connection._open(transaction_manager, connections, now)
        except BaseException:
            self._open_failed(pool, before, connection, connections)
            raise

    @staticmethod
    def _discard(connections: list[Connection]) -> None:
        for connection in connections:
            try:
                connection._release()
            except POSError as exc:  # a broken view has nothing left to give back
                logger.warning("discarding %r: %s", connection, exc)

    @contextlib.contextmanager
    def transaction(self, note: str | None = None) -> Iterator[Connection]:
        """``with db.transaction() as conn:`` commits on a clean exit, aborts on error,
        and closes the connection."""
        manager = transaction.TransactionManager()
        connection = self.open(manager)
        try:
            with manager as txn:
                if note:
                    txn.note(note)
                yield connection
        finally:
            connection.close()

    def classFactory(self, connection: Connection | None, modulename: str, globalname: str) -> Any:
        """The object a record's global ``modulename.globalname`` stands for (after
        ``class_aliases``), as ZODB's hook: override it (in a subclass or on the
        instance) to find classes your own way.

        The default imports only what the application allowed and gives a broken
        stand-in class (:mod:`atoll.broken`) for one that cannot be found; see
        :mod:`atoll.classes`. Whatever it returns is still checked: a persistent
        class, a standard data type or an allowed global, else ForbiddenGlobal.
        """
        return self.class_policy.find_global(modulename, globalname)

    # -- whole-database operations ----------------------------------------------------

    def close(self) -> None:
        """Close every connection (in use or idle) and the storage.

        A connection still in use is closed under its user: using it afterwards
        raises ConnectionStateError. The database stays in ``databases``. Closing
        goes on past a connection that fails to close (logged), so the storage is
        always closed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pool.clear()
            self._historical.clear()
            connections = list(self._connections)
        for connection in connections:
            try:
                connection._shut()
            except Exception:
                logger.exception("closing %r of database %r failed", connection, self.database_name)
        self.storage.close()

    # -- pool and cache settings (ZODB's names) -------------------------------------

    def getPoolSize(self) -> int:
        """How many idle connections the pool keeps."""
        return self._pool.size

    def setPoolSize(self, size: int) -> None:
        """Keep at most ``size`` idle connections (the extra ones go now)."""
        check_count(size, "pool_size")
        with self._lock:
            self._pool.size = size
            drop = self._pool._trim(time.time())
        self._discard(drop)

    def getCacheSize(self) -> int:
        """The target object count of each connection's cache."""
        return self.cache_size

    def setCacheSize(self, size: int) -> None:
        """Set the target object count of every current connection's cache, open
        or idle, and of those opened later."""
        check_count(size, "cache_size")
        self.cache_size = size
        for connection in self._current_connections(historical=False):
            connection._cache.cache_size = size

    def getCacheSizeBytes(self) -> int:
        """The target size in bytes of each connection's cache (0: no limit)."""
        return self.cache_size_bytes

    def setCacheSizeBytes(self, size: int) -> None:
        """Set the target size in bytes of every current connection's cache."""
        check_count(size, "cache_size_bytes")
        self.cache_size_bytes = size
        for connection in self._current_connections(historical=False):
            connection._cache.cache_size_bytes = size

    def getHistoricalPoolSize(self) -> int:
        """How many idle connections are kept per historical moment."""
        return self._historical_size

    def setHistoricalPoolSize(self, size: int) -> None:
        """Keep at most ``size`` idle connections per historical moment."""
        check_count(size, "historical_pool_size")
        self._set_historical(size=size)

    def getHistoricalCacheSize(self) -> int:
        """The target object count of each historical connection's cache."""
        return self.historical_cache_size

    def setHistoricalCacheSize(self, size: int) -> None:
        """Set the target object count of every historical connection's cache."""
        check_count(size, "historical_cache_size")
        self.historical_cache_size = size
        for connection in self._current_connections(historical=True):
            connection._cache.cache_size = size

    def getHistoricalCacheSizeBytes(self) -> int:
        """The target size in bytes of each historical connection's cache."""
        return self.historical_cache_size_bytes

    def setHistoricalCacheSizeBytes(self, size: int) -> None:
        """Set the target size in bytes of every historical connection's cache."""
        check_count(size, "historical_cache_size_bytes")
        self.historical_cache_size_bytes = size
        for connection in self._current_connections(historical=True):
            connection._cache.cache_size_bytes = size

    def getHistoricalTimeout(self) -> float:
        """Seconds an idle historical connection is kept."""
        return self._historical_timeout

    def setHistoricalTimeout(self, timeout: float) -> None:
        """Discard idle historical connections older than ``timeout`` seconds."""
        check_seconds(timeout, "historical_timeout")
        self._set_historical(timeout=timeout)

    def _set_historical(self, size: int | None = None, timeout: float | None = None) -> None:
        drop: list[Connection] = []
        now = time.time()
        with self._lock:
            if size is not None:
                self._historical_size = size
            if timeout is not None:
                self._historical_timeout = timeout
            for pool in self._historical.values():
                pool.size, pool.timeout = self._historical_size, self._historical_timeout
                drop.extend(pool._trim(now))
            for before in [b for b, p in self._historical.items() if not p.idle and not p.in_use]:
                del self._historical[before]
        self._discard(drop)

    def _current_connections(self, historical: bool) -> list[Connection]:
        """Every connection made and not discarded, of one kind."""
        with self._lock:
            return [c for c in self._connections if (c.before is not None) is historical]

    def pack(self, t: float | None = None, days: float = 0, *, progress: Progress | None = None) -> PackStats:
        """Remove revisions older than ``t`` (POSIX time, default now) minus ``days``,
        and objects no longer reachable from the root.

        A member of a collection (one in a ``databases`` dict with others, or whose
        storage remembers exchanging references with other databases) only loses old
        revisions: another database may hold the only reference to an object.
        :func:`atoll.collection.pack` packs a whole collection.
        """
        from atoll.collection.marking import pack_storage

        when = pack_time(t, days)
        others = sorted((set(self.databases) | self.collection_members()) - {self.database_name})
        report = progress or (lambda line: logger.info("%s", line))
        if others:
            report(
                f"database {self.database_name!r} is in a collection with {', '.join(map(repr, others))}: "
                "pack removes old revisions only, no unreachable objects; to remove those too, pack the "
                "whole collection with atoll.collection.pack(databases) (the `atoll pack` command does it "
                "given the collection's config file)"
            )
        return pack_storage(self.storage, tid_from_time(when), collect=not others, progress=report)

    def collection_members(self) -> set[str]:
        """The names of the other databases this one has exchanged cross-database
        references with, as its storage remembers them (see
        :mod:`atoll.collection.membership`)."""
        from atoll.collection import membership

        members = self._members
        if members is None:
            members = set(membership.read(self.storage).others)
            with self._lock:
                if self._members is None:
                    self._members = members
                members = self._members
        return set(members)

    def _note_cross_references(self, others: set[str]) -> None:
        """Remember, before a commit that holds references to ``others`` is voted,
        that they and this database form a collection (in every storage involved)."""
        new = others - self.collection_members()
        if not new:
            return
        from atoll.collection import membership

        membership.record(self, new)
        with self._lock:
            assert self._members is not None
            self._members |= new
        for other in new:
            partner = self.databases.get(other)
            if partner is not None:
                with partner._lock:
                    if partner._members is not None:
                        partner._members.add(self.database_name)

    def history(self, oid: bytes, size: int = 1) -> list[dict]:
        """Up to ``size`` revisions of an object, newest first, as dicts."""
        check_oid(oid)
        check_count(size, "history size", minimum=1)
        return [entry.as_dict() for entry in self.storage.history(oid, size)]

    # -- undo (ZODB's names; the work is in atoll.undo and atoll.collection.undo) ------

    def supportsUndo(self) -> bool:
        """Whether the storage keeps the history undo needs (``keep_history``)."""
        return bool(self.storage.keep_history)

    def undoLog(self, first: int = 0, last: int = -20, filter: Any = None) -> list[dict]:
        """Transactions that can be undone, newest first: entries ``first`` to ``last``
        (a negative ``last`` counts from ``first``) of those ``filter`` accepts. Each
        is a dict with ``id``, ``time``, ``user_name``, ``description``, ``size``, the
        extension's keys, and ``databases`` (the collection members it touched)."""
        from atoll.collection.undo import database_undo_log

        return database_undo_log(self, first, last, filter)

    def undoInfo(self, first: int = 0, last: int = -20, specification: dict | None = None) -> list[dict]:
        """:meth:`undoLog` keeping the entries whose items include ``specification``'s."""
        if not specification:
            return self.undoLog(first, last)
        return self.undoLog(first, last, lambda entry: all(entry.get(k) == v for k, v in specification.items()))

    def undo(self, id: bytes, txn: Any = None) -> None:
        """Undo the transaction ``id`` (from an undo log) when ``txn`` (default: the
        current transaction) commits; in a collection, in every database it touched."""
        self.undoMultiple([id], txn)

    def undoMultiple(self, ids: Any, txn: Any = None) -> None:
        """:meth:`undo` of several transactions, in one commit."""
        from atoll.collection.undo import undo_multiple

        undo_multiple(self, ids, txn)

    def lastTransaction(self) -> bytes:
        """The tid of the newest committed transaction."""
        return self.storage.last_transaction()

    def cacheMinimize(self) -> None:
        """Ghost unmodified objects in the caches of idle connections."""
        # Under the pools' lock: a thread taking one of these connections meanwhile
        # would use its cache while it is being emptied (caches are not thread-safe).
        with self._lock:
            idle = [c for _, c in self._pool.idle]
            for pool in self._historical.values():
                idle.extend(c for _, c in pool.idle)
            for connection in idle:
                connection.cacheMinimize()

    def new_oid(self) -> bytes:
        """A fresh oid from the storage."""
        return self.storage.new_oid()

    def __len__(self) -> int:
        return len(self.storage)


def _warn_if_not_all_durable(db: DB) -> None:
    """Say once per collection, when it first mixes them, that its memory databases
    cannot take part in a crash-safe commit (their part ends with the process)."""

    def durable(each: DB) -> bool:
        home = getattr(each.storage, "decision_home", None)
        return home is not None and home() is not None

    others = [each for each in db.databases.values() if each is not db]
    kinds_before = {durable(each) for each in others}
    if len(kinds_before) == 2 or (kinds_before | {durable(db)}) != {True, False}:
        return
    volatile = sorted(each.database_name for each in db.databases.values() if not durable(each))
    logger.warning(
        "the collection of %r mixes durable databases with %s (%s), which cannot take part in a crash-safe "
        "commit: after a crash, transactions stay whole in the durable databases only",
        db.database_name, "a memory database" if len(volatile) == 1 else "memory databases", ", ".join(volatile),
    )


def _check_db_arguments(**arguments: Any) -> None:
    """TypeError or ValueError for a bad size or timeout given to ``DB()``, raised
    before the storage opens."""
    for name, value in arguments.items():
        if name.endswith("timeout"):
            check_seconds(value, name)
        else:
            check_count(value, name)


def _before_tid(at: Any, before: Any) -> bytes | None:
    if at is not None and before is not None:
        raise ValueError("give at most one of 'at' and 'before'")
    if at is not None:
        return next_tid(_as_tid(at, "at"))
    if before is not None:
        return _as_tid(before, "before")
    return None


def _as_tid(value: Any, name: str) -> bytes:
    if isinstance(value, datetime.datetime):
        return tid_from_time(value)
    if isinstance(value, bytes) and len(value) == 8:
        return value
    raise TypeError(f"{name!r} must be a datetime or an 8-byte tid, not {value!r}")
