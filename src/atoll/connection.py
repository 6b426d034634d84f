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
from typing import TYPE_CHECKING, Any, Iterable

from persistent import PickleCache, Persistent
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef

from atoll.arguments import check_oid
from atoll.errors import (
    ConnectionStateError,
    InvalidObjectReference,
    POSError,
    POSKeyError,
    ReadOnlyHistoryError,
)
from atoll.ids import ROOT_OID, oid_repr
from atoll.savepoint import SavepointStore
from atoll.readahead import ReadAhead
from atoll.serialize import ObjectReader, ObjectWriter, needs_args
from atoll.committing import CommitMixin, committing_connection

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["Connection", "RootConvenience"]

logger = logging.getLogger(__name__)

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


class Connection(CommitMixin):
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

    def exportFile(self, oid: bytes, f: Any = None) -> Any:
        """Write the object ``oid`` and everything it reaches, across the
        collection, to ``f`` (a path or a binary file; None: a temporary file) and
        return ``f`` (the temporary file rewound to its start). ZODB's name; see
        :mod:`atoll.exporting` (:func:`~atoll.exporting.export_file` also returns
        what was written)."""
        import tempfile

        from atoll.exporting import export_file

        temporary = f is None
        if temporary:
            f = tempfile.TemporaryFile(prefix="atoll-export-")
        export_file(self, oid, f)
        if temporary:
            f.seek(0)
        return f

    def importFile(self, f: Any, *, leaving: str = "refuse") -> Persistent:
        """Add the objects of an export file ``f`` (a path or a binary file) to
        this transaction with new oids, and return the imported root object, to
        attach where it belongs before committing. ZODB's name; see
        :mod:`atoll.exporting` for where records go and for ``leaving``."""
        from atoll.exporting import import_file

        return import_file(self, f, leaving=leaving)[0]

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

    def _ghost_here(self, oid: bytes, klass: type[object] | None) -> Persistent:
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

    def _ghost(self, oid: bytes, klass: type[object] | None, created: list[bytes] | None = None) -> Persistent:
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

    def _foreign_ghost(self, database_name: str, oid: bytes, klass: type[object] | None) -> Persistent:
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

