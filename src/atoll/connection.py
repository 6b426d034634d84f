"""Connection: one thread's window on a database, and its part of each commit.

A connection owns an object cache (``persistent.PickleCache``) and a storage view
(see :mod:`atoll.storage.base`). Objects it loads are ghosts until touched; objects
changed in a transaction register with it and are written when the transaction
commits, the connection acting as a ``transaction`` data manager.

Snapshots: the view's snapshot moves only at transaction boundaries (open,
``newTransaction``, ``afterCompletion``, ``sync``); every oid changed by others since
the last snapshot is then ghosted in the cache, so a transaction sees one consistent
state.

Connections of a multi-database collection form a *group*: ``connections`` is one
dict shared by all of them, and all use the same transaction manager.
"""

from __future__ import annotations

import logging
import pickle
import uuid
from typing import TYPE_CHECKING, Any, Iterable

from persistent import PickleCache, Persistent
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef

from atoll.arguments import check_oid
from atoll import gcpause
from atoll.errors import (
    ConflictError,
    ConnectionStateError,
    InvalidObjectReference,
    POSError,
    POSKeyError,
    ReadOnlyHistoryError,
    StorageTransactionError,
    UndoError,
    UnpicklableError,
)
from atoll.ids import ROOT_OID, oid_repr, z64
from atoll.savepoint import ADDED, NEW, SavepointStore
from atoll.readahead import ReadAhead
from atoll.serialize import ObjectReader, ObjectWriter, needs_args
from atoll.storage.base import Member, TransactionMeta
from atoll.unpicklable import describe

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["Connection", "RootConvenience"]

logger = logging.getLogger(__name__)

# Key under which a transaction keeps the id shared by all storages of one commit.
_TRANSACTION_ID = object()
# Key under which a transaction keeps its committing connections, by storage sort key.
_COMMITTING = object()


def committing_connection(txn: Any, storage: Any) -> Connection | None:
    """The connection that began committing ``txn`` to ``storage``, if one did (an
    undo writes through it: see :mod:`atoll.undo`)."""
    try:
        return txn.data(_COMMITTING).get(storage.sort_key())
    except KeyError:
        return None


class RootConvenience:
    """``conn.root``: call it for the root mapping, or use its keys as attributes."""

    __slots__ = ("_root",)

    def __init__(self, root: PersistentMapping) -> None:
        object.__setattr__(self, "_root", root)

    def __call__(self) -> PersistentMapping:
        return self._root

    def __getattr__(self, name: str) -> Any:
        try:
            return self._root[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._root[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._root[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return [key for key in self._root.keys() if isinstance(key, str)]

    def __repr__(self) -> str:
        return f"<root: {' '.join(sorted(map(str, self._root.keys())))}>"


class _Savepoint:
    """A connection's state at a savepoint: a position in its savepoint store
    (everything changed is saved there) and the objects that must stay current."""

    def __init__(self, connection: Connection, position: int) -> None:
        self._connection = connection
        self.position = position
        self.read_current = dict(connection._read_current)

    def rollback(self) -> None:
        self._connection._rollback(self)


class Connection:
    """A connection to one database; see the module docstring. Made by ``DB.open``."""

    def __init__(self, db: DB, cache_size: int, cache_size_bytes: int = 0, before: bytes | None = None) -> None:
        self._db = db
        self.before = before
        self._view = db.storage.open_view(before)
        self._cache = PickleCache(self, cache_size, cache_size_bytes)
        self._reader = ObjectReader(
            self._ghost_here, self._foreign_ghost, self._weak_reference, db.class_policy, self
        )
        self._writer = ObjectWriter(self, self._claim_new_object, self._cross_reference, db.class_policy)
        self.transaction_manager: Any = None
        self.connections: dict[str, Connection] = {}
        self.opened: float | None = None  # time of open; None while closed
        # Closed with its group's first connection and kept in the group (not in its
        # database's pool), to reopen with it: the first's cached objects may hold ghosts
        # of this connection (cross-database references), so it must stay their jar.
        self._parked = False
        self._commit_on_exit = False  # set by atoll.connect()
        self._closes_db = False  # set by atoll.connect(): close() closes the collection
        self._on_close: list[Any] = []  # onCloseCallback's callables, run by the next close()
        self._refused: list[Persistent] = []  # objects changed through a historical connection
        # Per-transaction state, emptied at every transaction boundary:
        self._joined = False  # this connection is a resource of the current transaction
        self._registered: list[Persistent] = []  # changed objects, to store at commit
        self._creating: dict[bytes, Persistent] = {}  # new objects given an oid this txn
        self._added: dict[bytes, Persistent] = {}  # new objects placed by add(), a subset
        self._read_current: dict[bytes, bytes] = {}  # oid -> serial that must stay current
        self._pending: list[Persistent] = []  # objects still to serialize (commit/savepoint)
        self._stored: dict[bytes, Persistent] = {}  # objects written in the commit in progress
        self._resolved: set[bytes] = set()  # oids merged by conflict resolution in vote
        self._referenced_databases: set[str] = set()  # other databases this commit refers to
        # Records of the changes saved by savepoints (atoll.savepoint), while the
        # objects themselves may be ghosts again; None until the first savepoint.
        self._saved: SavepointStore | None = None
        self._undo: dict[bytes, tuple[bytes, bytes]] = {}  # an undo's records in this commit
        # Records loaded ahead of their objects (get(), prefetch(), read-ahead); valid
        # for one snapshot, so emptied whenever the snapshot moves.
        self._ahead = ReadAhead(self)
        self._plain_classes: set[type] = set()  # classes whose ghosts need no arguments
        # Ghosts created by the set_state running: in this connection, and (through
        # cross-database references) in others of the group; for read-ahead. (Kept
        # here, not in ReadAhead: a cold read adds to them once per reference.)
        self._new_ghosts: list[bytes] | None = None
        self._new_foreign_ghosts: dict[Connection, list[bytes]] | None = None

    def __repr__(self) -> str:
        extra = f" (before {self.before.hex()})" if self.before is not None else ""
        return f"<Connection at {id(self):08x}{extra} to {self._db.database_name!r}>"

    # -- opening and closing (called by DB) ------------------------------------

    def _open(self, transaction_manager: Any, connections: dict[str, Connection] | None, now: float) -> None:
        self.opened = now
        self.transaction_manager = transaction_manager
        if connections is None:
            connections = self.connections  # the group kept from its last use ({} if new)
        self.connections = connections
        self.connections[self._db.database_name] = self
        transaction_manager.registerSynch(self)
        self._poll()
        for other in list(connections.values()):
            if other._parked:
                other._db._reopen_in_group(other, transaction_manager, connections, now)

    def close(self, primary: bool = True) -> None:
        """Return the connection (and, for the group's first, the whole group) to its pool."""
        if self.opened is None:
            return
        if self._registered or self._creating or self._read_current or self._saved is not None:
            raise ConnectionStateError(
                f"cannot close a connection to {self._db.database_name!r} that is joined to a "
                "transaction: commit or abort first"
            )
        group = self.connections
        members = len(group)
        if primary:
            for other in list(group.values()):
                if other is not self:
                    other.close(primary=False)
        self._forget_refused()
        self._cache.incrgc()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failing callback must not keep the connection open
                logger.exception("close callback %r of %r failed", callback, self)
        self._unregister_synch()
        self.opened = None
        self._commit_on_exit = False
        reusable = True
        if not self._db._closed:
            try:
                self._poll()  # ends any read transaction the view holds while idle
            except POSError as exc:  # storage failed (server gone): do not pool this one
                logger.warning("connection to %r not reused: %s", self._db.database_name, exc)
                reusable = False
        if not primary and reusable:
            self._parked = True  # stays in the group, which the first connection keeps
            self._db._park_connection(self)
            return
        if not primary:
            del group[self._db.database_name]  # a broken member leaves the group
        elif len(group) < members:
            reusable = False  # its cache may hold ghosts of the member that left
        if not reusable:
            self.connections = {}
        self._db._return_connection(self, reusable)
        if self._closes_db:
            self._close_databases()

    def _close_databases(self) -> None:
        """Close the collection this connection's ``atoll.connect()`` opened."""
        self._closes_db = False
        failures = []
        for db in list(self._db.databases.values()):
            try:
                db.close()
            except Exception as exc:  # close the others all the same
                failures.append(exc)
        if failures:
            raise failures[0]

    def _release(self) -> None:
        """Drop the cache and the view for good (the pool discards this connection,
        or its database closes): the view's own database connection closes now,
        not when the garbage collector finds it. The group members parked with it go too."""
        if not self._parked:
            for other in list(self.connections.values()):
                if other._parked:
                    other._parked = False
                    other._release()
        self.connections = {}
        self._cache.minimize()
        self._ahead.clear()
        if self._saved is not None:
            self._saved.close()
            self._saved = None
        self._view.close()

    def _unregister_synch(self) -> None:
        """Stop following the transaction manager's transactions.

        A thread-local manager (``transaction.manager``) registered this connection
        in the thread that opened it; unregistering from another thread (a database
        closed under a leaked connection) finds nothing there, and that is fine.
        """
        manager, self.transaction_manager = self.transaction_manager, None
        if manager is not None:
            try:
                manager.unregisterSynch(self)
            except KeyError:
                logger.debug("%r was not registered with this thread's transaction manager", self)

    def _shut(self) -> None:
        """Close for good because the database closes, whatever state it is in."""
        self._unregister_synch()
        self._on_close = []
        self.opened = None
        self._clear_transaction()
        self._release()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.opened is None:
            return
        manager = self.transaction_manager
        try:
            if self._commit_on_exit and exc_type is None:
                manager.commit()
            elif exc_type is not None:
                manager.abort()
        except BaseException:
            manager.abort()  # a failed commit: the connection must leave the transaction to close
            raise
        finally:
            try:
                self.close()  # with atoll.connect(), closes the databases and storages too
            finally:
                if self._closes_db:  # close() failed before it got to them
                    self._close_databases()

    def _check_open(self) -> None:
        if self.opened is None:
            raise ConnectionStateError(f"the connection to {self._db.database_name!r} is closed")

    # -- the public API -------------------------------------------------------

    def db(self) -> DB:
        """The database this connection belongs to."""
        return self._db

    def isReadOnly(self) -> bool:
        """True for a historical connection or a read-only storage."""
        self._check_open()
        return self.before is not None or self._db.storage.read_only

    @property
    def root(self) -> RootConvenience:
        """``conn.root()`` is the root mapping; ``conn.root.name`` is ``root()['name']``."""
        return RootConvenience(self.get(ROOT_OID))

    def onCloseCallback(self, f: Any) -> None:
        """Call ``f()`` when this connection is next closed (once; an exception it
        raises is logged, and closing goes on)."""
        self._on_close.append(f)

    def get(self, oid: bytes) -> Persistent:
        """The object with this oid, from the cache or as a ghost; POSKeyError if none."""
        self._check_open()
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        obj = self._creating.get(oid)
        if obj is not None:
            return obj
        check_oid(oid)  # after the cache: a bad oid is never found there
        if self._saved is not None and oid in self._saved:
            record = self._saved.load(oid)  # new or changed, saved by a savepoint
        else:
            record = self._ahead.keep(oid)
        obj = self._reader.ghost_from_record(record[0], oid)
        self._cache.new_ghost(oid, obj)
        return obj

    __getitem__ = get  # persistent.wref.WeakRef looks its object up as ``jar[oid]``

    def add(self, obj: Persistent) -> None:
        """Place a new object in this connection's database (before any reference
        from another database claims it)."""
        self._check_open()
        if not isinstance(obj, Persistent):
            raise TypeError(f"only persistent objects can be added to a connection, not {obj!r}")
        if self.before is not None:
            raise ReadOnlyHistoryError(f"cannot add {obj!r} through a historical connection")
        if obj._p_jar is None:
            self._claim_new_object(obj)
            self._added[obj._p_oid] = obj
        elif obj._p_jar is not self:
            raise InvalidObjectReference(
                f"{obj!r} already belongs to {obj._p_jar!r}; it cannot be added to {self!r}"
            )

    def get_connection(self, database_name: str) -> Connection:
        """The group's connection to another database of the collection, opened on
        first use with this connection's transaction manager; KeyError if unknown."""
        self._check_open()
        connection = self.connections.get(database_name)
        if connection is None:
            other_db = self._db.databases[database_name]
            connection = other_db._open_connection(self.transaction_manager, self.before, self.connections)
        return connection

    def sync(self) -> None:
        """Abort the current transaction and move to the newest snapshot."""
        self._check_open()
        self.transaction_manager.abort()
        self._poll()
        self._cache.incrgc()

    def cacheMinimize(self) -> None:
        """Ghost every unmodified object in the cache."""
        self._cache.minimize()

    def cacheGC(self) -> None:
        """Shrink the cache towards its target size."""
        self._cache.incrgc()

    def readCurrent(self, obj: Persistent) -> None:
        """Make this transaction fail with a conflict if ``obj`` changes before it commits."""
        self._check_open()
        if obj._p_jar is not self:
            raise InvalidObjectReference(f"{obj!r} does not belong to {self!r}")
        oid = obj._p_oid
        if oid in self._creating or self.before is not None:
            return
        if obj._p_changed is None:
            obj._p_activate()
        self._read_current.setdefault(oid, obj._p_serial)
        self._join()

    def prefetch(self, *targets: Any) -> None:
        """Load the records of these oids or objects (or iterables of them) in one
        round trip, so touching them later needs no further load."""
        self._check_open()
        self._ahead.prefetch(_flatten_oids(targets, self))

    # -- persistent's jar protocol ---------------------------------------------

    def setstate(self, obj: Persistent) -> None:
        """Load a ghost's state (called by persistent when a ghost is touched)."""
        oid = obj._p_oid
        if self.opened is None:
            raise ConnectionStateError(
                f"cannot load object {oid_repr(oid)} of {self._db.database_name!r}: the connection is closed"
            )
        if self._saved is not None and oid in self._saved:
            data, serial = self._saved.load(oid)  # new or changed, saved by a savepoint
        else:
            data, serial = self._ahead.load(oid)
        outer = self._new_ghosts, self._new_foreign_ghosts
        created = self._new_ghosts = []
        self._new_foreign_ghosts = None  # made by the first foreign ghost, if any
        try:
            obj.__setstate__(self._reader.load_state(data, type(obj), oid))
            foreign = self._new_foreign_ghosts
        finally:
            self._new_ghosts, self._new_foreign_ghosts = outer
        obj._p_serial = serial
        obj._p_estimated_size = len(data)
        if len(created) > 1:
            self._ahead.remember(created)
        if foreign:
            for connection, oids in foreign.items():
                connection._ahead.remember(oids)

    def register(self, obj: Persistent) -> None:
        """Note a changed object (called by persistent on its first change)."""
        if self.before is not None:
            # The change is already made in memory: the object gets its stored state
            # back when the transaction ends (commit or abort) or the connection closes.
            self._refused.append(obj)
            raise ReadOnlyHistoryError(
                f"cannot change {type(obj).__name__} {oid_repr(obj._p_oid)} through a historical connection"
            )
        if not self._joined:
            self._join()
        self._registered.append(obj)

    def _load(self, oid: bytes) -> tuple[bytes, bytes]:
        try:
            return self._view.load(oid)
        except POSKeyError:
            raise POSKeyError(oid, self._db.database_name) from None

    def _ghost_here(self, oid: bytes, klass: type | None) -> Persistent:
        """:meth:`_ghost` for the reader: new ghosts go to ``_new_ghosts``. (Its
        common case inline: a cold read makes one call per reference.)"""
        cache = self._cache
        obj = cache.get(oid)
        if obj is not None:
            return obj
        if klass not in self._plain_classes:
            if klass is None or needs_args(klass):
                return self._ghost(oid, klass, self._new_ghosts)
            self._plain_classes.add(klass)
        if self._creating:  # the oid may be a new object of this transaction
            return self._ghost(oid, klass, self._new_ghosts)
        obj = klass.__new__(klass)
        cache.new_ghost(oid, obj)
        created = self._new_ghosts
        if created is not None:
            created.append(oid)
        return obj

    def _ghost(self, oid: bytes, klass: type | None, created: list[bytes] | None = None) -> Persistent:
        """This connection's object for ``oid``: cached, new in this transaction, or
        a new ghost (whose oid goes to ``created``)."""
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        obj = self._creating.get(oid)
        if obj is not None:
            return obj
        if klass is None or needs_args(klass):
            return self.get(oid)
        obj = klass.__new__(klass)
        self._cache.new_ghost(oid, obj)
        if created is not None:
            created.append(oid)
        return obj

    def _foreign_ghost(self, database_name: str, oid: bytes, klass: type | None) -> Persistent:
        try:
            connection = self.get_connection(database_name)
        except KeyError:
            raise InvalidObjectReference(
                f"an object of {self._db.database_name!r} refers to database {database_name!r}, "
                "which is not in the collection"
            ) from None
        created = None
        if self._new_ghosts is not None:
            if self._new_foreign_ghosts is None:
                self._new_foreign_ghosts = {}
            created = self._new_foreign_ghosts.setdefault(connection, [])
        return connection._ghost(oid, klass, created)

    def _weak_reference(self, oid: bytes, database_name: str | None) -> WeakRef:
        """The ``WeakRef`` a record's weak reference reads as; calling it loads the
        object (None once it is gone)."""
        ref = WeakRef.__new__(WeakRef)
        ref.oid = oid
        if database_name is None or database_name == self._db.database_name:
            ref.dm = self
        else:
            try:
                ref.dm = self.get_connection(database_name)
            except KeyError:
                raise InvalidObjectReference(
                    f"an object of {self._db.database_name!r} refers weakly to database "
                    f"{database_name!r}, which is not in the collection"
                ) from None
        ref.database_name = ref.dm.db().database_name
        return ref

    # -- building commits ------------------------------------------------------

    def _join(self) -> None:
        if not self._joined:
            self._check_open()
            self.transaction_manager.get().join(self)
            self._joined = True

    def _claim_new_object(self, obj: Persistent) -> None:
        """Make a new object ours: give it an oid and schedule it for storing."""
        if self.before is not None:
            raise ReadOnlyHistoryError(f"cannot add {obj!r} through a historical connection")
        oid = self._db.storage.new_oid()
        obj._p_oid = oid
        obj._p_jar = self
        self._creating[oid] = obj
        self._pending.append(obj)
        if not self._joined:
            self._join()

    def _implicitly_adding(self, oid: bytes) -> bool:
        if oid in self._creating:
            return oid not in self._added
        saved = self._saved
        return saved is not None and oid in saved and saved.flags(oid) == NEW

    def _cross_reference(self, obj: Persistent) -> str:
        """Check a reference to another connection's object; return its database name."""
        jar = obj._p_jar
        here = self._db.database_name
        if not self._db.xrefs:
            raise InvalidObjectReference(
                f"database {here!r} does not allow cross-database references "
                f"(to {type(obj).__name__} {oid_repr(obj._p_oid)} of {jar.db().database_name!r})"
            )
        other = jar.db().database_name
        if jar.db().databases is not self._db.databases or self._db.databases.get(other) is not jar.db():
            raise InvalidObjectReference(
                f"{type(obj).__name__} {oid_repr(obj._p_oid)} belongs to database {other!r}, "
                f"which is not in the collection of {here!r}"
            )
        if jar.connections is not self.connections:
            raise InvalidObjectReference(
                f"{type(obj).__name__} {oid_repr(obj._p_oid)} belongs to another connection "
                f"to database {other!r}; objects can be shared only within one connection group"
            )
        if jar._implicitly_adding(obj._p_oid):
            raise InvalidObjectReference(
                f"A new object is reachable from multiple databases ({other!r} and {here!r}); "
                "won't guess which one it belongs to: place it with conn.add(obj) first"
            )
        self._referenced_databases.add(other)
        return other

    def _serialize_pending(self, into: dict[bytes, Any], store: bool) -> None:
        """Serialize every object in ``_pending`` (and those it discovers).

        With ``store``, ``into`` gets oid -> object and the view the records, all
        at once at the end (a call per record costs as much as pickling a small
        state); else ``into`` gets oid -> record."""
        pending, creating = self._pending, self._creating
        serialize = self._writer.serialize
        records: dict[bytes, tuple[bytes, bytes]] = {}
        while pending:
            obj = pending.pop()
            oid = obj._p_oid
            if oid in into or obj._p_jar is not self:
                continue
            if oid in creating:
                read = z64
            else:
                if obj._p_changed is None:
                    continue  # invalidated after it registered: nothing to write
                read = obj._p_serial
            try:
                data = serialize(obj)
            except POSError:
                raise
            except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
                raise self._unpicklable(obj, exc) from exc
            if store:
                into[oid] = obj
                records[oid] = (read, data)
                obj._p_estimated_size = len(data)
            else:
                into[oid] = data
        if records:
            self._view.store_many(records)

    def _unpicklable(self, obj: Persistent, exc: BaseException) -> UnpicklableError:
        """The error for an object whose record cannot be written, saying where."""
        klass = type(obj)
        try:
            detail = describe(obj, obj.__getstate__(), exc)
        except Exception as inner:  # noqa: BLE001 - the message must not hide the first error
            detail = f"{exc} (and looking for the part that failed raised {inner!r})"
        return UnpicklableError(f"{klass.__module__}.{klass.__qualname__}", obj._p_oid, self._db.database_name, detail)

    # -- the transaction package's data-manager protocol --------------------------

    def sortKey(self) -> str:
        return f"{self._db.storage.sort_key()}:{id(self):016x}"

    def abort(self, txn: Any) -> None:
        self._abort_changes()

    def tpc_begin(self, txn: Any) -> None:
        self._check_open()
        try:
            shared_id, participants, members = txn.data(_TRANSACTION_ID)
        except KeyError:
            # One id and one list of storages for every connection of the commit; the
            # lists are complete before any votes (see TransactionMeta).
            shared_id, participants, members = uuid.uuid4().hex, [], []
            txn.set_data(_TRANSACTION_ID, (shared_id, participants, members))
        storage = self._db.storage
        key = storage.sort_key()
        if key in participants:
            # Its vote would wait for the storage's commit lock, held by the other one.
            raise StorageTransactionError(
                f"two connections to the storage of database {self._db.database_name!r} ({key}) "
                "take part in one transaction; a transaction writes each storage through one "
                "connection: give each connection its own transaction manager, "
                "e.g. db.open(transaction.TransactionManager())"
            )
        participants.append(key)
        order_key = self.sortKey()
        members.append(Member(order_key, storage.decision_home()))
        try:
            txn.data(_COMMITTING)[key] = self
        except KeyError:
            txn.set_data(_COMMITTING, {key: self})
        meta = TransactionMeta(
            user=str(txn.user or ""),
            description=str(txn.description or ""),
            extension=dict(txn.extension),
            id=shared_id,
            participants=participants,
            members=members,
            order_key=order_key,
        )
        self._view.tpc_begin(meta)

    def commit(self, txn: Any) -> None:
        self._pending = [*self._creating.values(), *self._registered]
        with gcpause.paused():
            self._serialize_pending(self._stored, store=True)
            if self._saved is not None:
                for batch in self._saved.records(exclude=self._stored):
                    self._view.store_many(batch)
        if self._referenced_databases:
            # Before the vote (savepoints' records included: their references were
            # noted when they were written): no cross-database reference is durable
            # before both ends remember they are in one collection
            # (atoll.collection.membership).
            self._db._note_cross_references(self._referenced_databases)
        for oid, serial in self._read_current.items():
            if oid not in self._stored:
                self._view.check_current(oid, serial)

    def _add_undo(self, records: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Write an undo's records (oid -> (read serial, data)) in this commit."""
        self._check_undo(records)
        self._undo.update(records)
        self._view.store_many(records)

    def _check_undo(self, oids: Iterable[bytes]) -> None:
        """UndoError if this transaction also changes one of the objects an undo writes."""
        changed = {obj._p_oid for obj in self._registered if obj._p_jar is self} | self._stored.keys()
        both = changed.intersection(oids)
        if both:
            raise UndoError(
                f"cannot undo a change to object {oid_repr(min(both))} of database "
                f"{self._db.database_name!r} and change it in the same transaction",
                oid=min(both),
            )

    def tpc_vote(self, txn: Any) -> None:
        if self._undo:
            self._check_undo(self._undo)
        try:
            # Not paused (see atoll.gcpause): the vote waits for the commit lock.
            self._resolved = self._view.tpc_vote(self._db.resolve_conflict)
        except ConflictError as exc:
            exc.database_name = self._db.database_name
            if exc.class_name is None and exc.oid is not None:
                obj = self._stored.get(exc.oid) or self._cache.get(exc.oid)
                if obj is not None:
                    exc.class_name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            if exc.oid in self._undo:
                from atoll.undo import undo_error

                raise undo_error(exc.oid, self._db.database_name, exc.class_name) from exc
            raise

    def tpc_finish(self, txn: Any) -> None:
        tid = self._view.tpc_finish()
        with gcpause.paused():
            self._finish(tid)

    def _finish(self, tid: bytes) -> None:
        for obj in self._stored.values():
            obj._p_changed = False
            obj._p_serial = tid
        cache = self._cache
        for oid, obj in self._creating.items():
            if oid in self._stored:
                cache[oid] = obj
        if self._saved is not None:
            for oid in self._saved.index:
                obj = cache.get(oid)
                if obj is not None and oid not in self._stored and obj._p_changed is not None:
                    obj._p_serial = tid  # unchanged since its savepoint: it is this revision
        for oid in self._resolved:
            obj = self._stored.get(oid) or cache.get(oid)
            if obj is not None:
                obj._p_invalidate()  # the storage holds a merged state we never saw
        if self._undo:
            cache.invalidate(list(self._undo))  # our own commit: no poll will report these
        self._clear_transaction()

    def tpc_abort(self, txn: Any) -> None:
        self._view.tpc_abort()
        self._abort_changes()

    def _abort_changes(self) -> None:
        cache = self._cache
        for oid, obj in self._creating.items():
            if cache.get(oid) is obj:
                del cache[oid]
            obj._p_changed = False
            obj._p_jar = None
            obj._p_oid = None
        stale = [obj._p_oid for obj in self._registered if obj._p_jar is self]
        stale.extend(self._stored)
        saved = self._saved
        if saved is not None:
            for oid in saved.index:
                if saved.flags(oid) & NEW:
                    self._disown(oid)
                else:
                    stale.append(oid)
        cache.invalidate(stale)
        self._clear_transaction()

    def _disown(self, oid: bytes) -> None:
        """A new object saved by a savepoint leaves the transaction: no oid, no jar."""
        obj = self._cache.get(oid)
        if obj is not None:
            del self._cache[oid]
            if obj._p_jar is self:
                obj._p_changed = False
                obj._p_jar = None
                obj._p_oid = None

    def _clear_transaction(self) -> None:
        self._referenced_databases = set()
        self._joined = False
        self._registered = []
        self._creating = {}
        self._added = {}
        self._read_current = {}
        self._pending = []
        self._stored = {}
        self._resolved = set()
        self._undo = {}
        if self._saved is not None:
            self._saved.close()
            self._saved = None

    # -- savepoints --------------------------------------------------------------

    def savepoint(self) -> _Savepoint:
        """Save every change since the last savepoint to the savepoint store and let
        the cache ghost the objects changed (see :mod:`atoll.savepoint`)."""
        saved = self._saved
        if saved is None:
            saved = self._saved = SavepointStore()
        states: dict[bytes, bytes] = {}
        self._pending = [*self._creating.values(), *self._registered]
        with gcpause.paused():
            self._serialize_pending(states, store=False)
        if states:
            changed = {obj._p_oid: obj for obj in self._registered if obj._p_jar is self}
            creating, added, cache = self._creating, self._added, self._cache
            records = []
            for oid, data in states.items():
                obj = creating.get(oid)
                if obj is not None:
                    flags = NEW | (ADDED if oid in added else 0)
                    if cache.get(oid) is not obj:
                        cache[oid] = obj
                else:
                    obj = changed[oid]
                    flags = saved.flags(oid) if oid in saved else 0
                records.append((oid, z64 if flags & NEW else obj._p_serial, flags, data))
            saved.write(records)
            for oid in states:
                obj = creating.get(oid) or changed[oid]
                obj._p_changed = False  # its record is saved: the cache may ghost it
        self._registered, self._creating, self._added = [], {}, {}
        self._cache.incrgc()
        return _Savepoint(self, saved.position)

    def _rollback(self, savepoint: _Savepoint) -> None:
        cache = self._cache
        for oid, obj in self._creating.items():
            if cache.get(oid) is obj:
                del cache[oid]
            obj._p_changed = False
            obj._p_jar = None
            obj._p_oid = None
        stale = [obj._p_oid for obj in self._registered if obj._p_jar is self]
        saved = self._saved
        if saved is not None:
            for oid, kept, new in saved.rollback(savepoint.position):
                if new and not kept:
                    self._disown(oid)
                else:
                    stale.append(oid)
        cache.invalidate(stale)  # they reload from the savepoint store, or the storage
        self._registered, self._creating, self._added = [], {}, {}
        self._read_current = dict(savepoint.read_current)

    # -- transaction synchronizer (snapshot moves) ---------------------------------

    # A transaction boundary is where the cache shrinks back towards its target
    # size, as in ZODB: objects changed or loaded by the transaction are saved or
    # discarded by now, so any of them may become a ghost. (Under the target, incrgc
    # returns at once.)

    def newTransaction(self, txn: Any = None, sync: bool = True) -> None:
        if self.opened is not None and not self._joined:
            self._poll()
            self._cache.incrgc()

    def beforeCompletion(self, txn: Any) -> None:
        pass

    def afterCompletion(self, txn: Any) -> None:
        self._forget_refused()
        if self.opened is not None:
            self._poll()
            self._cache.incrgc()

    def _forget_refused(self) -> None:
        """Give objects changed through a historical connection their stored state."""
        if self._refused:
            refused, self._refused = self._refused, []
            self._cache.invalidate([obj._p_oid for obj in refused if obj._p_jar is self])

    def _poll(self) -> None:
        changed = self._view.poll()
        self._ahead.moved()
        if changed is None:
            self._cache.invalidate(list(self._cache.cache_data.keys()))
        elif changed:
            self._cache.invalidate(list(changed))


def _flatten_oids(targets: Iterable[Any], connection: Connection) -> Iterable[bytes]:
    for target in targets:
        if isinstance(target, bytes):
            yield target
        elif isinstance(target, Persistent):
            if target._p_jar is connection and target._p_oid is not None:
                yield target._p_oid
        else:
            yield from _flatten_oids(target, connection)

