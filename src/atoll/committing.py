"""The commit side of a Connection: building a commit from the objects changed in
a transaction, the ``transaction`` package's data-manager protocol (two-phase
commit), and savepoints.

:class:`CommitMixin` is a method group of :class:`atoll.connection.Connection`,
kept in its own module so that each reads in one sitting; it uses the connection's
state (cache, view, registered objects) and has no state of its own.
"""

from __future__ import annotations

import logging
import pickle
import os
from typing import TYPE_CHECKING, Any, Iterable

from persistent import Persistent

from atoll import gcpause
from atoll.errors import (
    ConflictError,
    InvalidObjectReference,
    POSError,
    ReadOnlyHistoryError,
    StorageTransactionError,
    UndoError,
    UnpicklableError,
)
from atoll.ids import oid_repr, z64
from atoll.savepoint import ADDED, NEW, SavepointStore
from atoll.storage.base import CommitMembers, Member, TransactionMeta
from atoll.unpicklable import describe

if TYPE_CHECKING:
    from atoll.connection import Connection
    from atoll.db import DB
    from atoll.serialize import ObjectWriter
    from atoll.storage.base import StorageView

__all__ = ["CommitMixin", "committing_connection"]

logger = logging.getLogger("atoll.connection")

# Key under which a transaction keeps its _Commit.
_COMMIT = object()


class _Commit:
    """One transaction's commit as its connections join it, kept in the transaction
    (``txn.data(_COMMIT)``) from the first connection's ``tpc_begin`` on."""

    __slots__ = ("id", "connections", "members")

    def __init__(self) -> None:
        self.id = os.urandom(16).hex()  # shared by every storage (TransactionMeta.id)
        # The connection committing to each storage, by the storage's sort key.
        self.connections: dict[str, CommitMixin] = {}
        self.members = CommitMembers()  # every storage's TransactionMeta.members

    @staticmethod
    def of(txn: Any) -> _Commit:
        """``txn``'s commit, made on first use."""
        try:
            return txn.data(_COMMIT)
        except KeyError:
            commit = _Commit()
            txn.set_data(_COMMIT, commit)
            return commit


def committing_connection(txn: Any, storage: Any) -> CommitMixin | None:
    """The connection that began committing ``txn`` to ``storage``, if one did (an
    undo writes through it: see :mod:`atoll.undo`)."""
    try:
        commit: _Commit = txn.data(_COMMIT)
    except KeyError:
        return None
    return commit.connections.get(storage.sort_key())


class _Savepoint:
    """A connection's state at a savepoint: a position in its savepoint store
    (everything changed is saved there) and the objects that must stay current."""

    def __init__(self, connection: CommitMixin, position: int) -> None:
        self._connection = connection
        self.position = position
        self.read_current = dict(connection._read_current)

    def rollback(self) -> None:
        self._connection._rollback(self)


class CommitMixin:
    """Connection's methods that build and run its part of each commit."""

    if TYPE_CHECKING:
        # The connection's state these methods use: Connection.__init__ sets (and
        # documents) each; _clear_transaction empties the per-transaction part.
        _db: DB
        _view: StorageView
        _cache: Any  # persistent.PickleCache
        _writer: ObjectWriter
        before: bytes | None
        transaction_manager: Any
        connections: dict[str, Connection]
        _joined: bool
        _registered: list[Persistent]
        _creating: dict[bytes, Persistent]
        _added: dict[bytes, Persistent]
        _read_current: dict[bytes, bytes]
        _pending: list[Persistent]
        _stored: dict[bytes, Persistent]
        _resolved: set[bytes]
        _referenced_databases: set[str]
        _saved: SavepointStore | None
        _undo: dict[bytes, tuple[bytes, bytes]]

        def _check_open(self) -> None: ...

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
        commit = _Commit.of(txn)
        storage = self._db.storage
        key = storage.sort_key()
        if key in commit.connections:
            # Its vote would wait for the storage's commit lock, held by the other one.
            raise StorageTransactionError(
                f"two connections to the storage of database {self._db.database_name!r} ({key}) "
                "take part in one transaction; a transaction writes each storage through one "
                "connection: give each connection its own transaction manager, "
                "e.g. db.open(transaction.TransactionManager())"
            )
        order_key = self.sortKey()
        commit.members.add(Member(order_key, storage.decision_home()))
        commit.connections[key] = self
        meta = TransactionMeta(
            user=str(txn.user or ""),
            description=str(txn.description or ""),
            extension=dict(txn.extension),
            id=commit.id,
            members=commit.members,
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
            if exc.oid is not None and exc.oid in self._undo:
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
        stale = self._forget_unsaved()
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

    def _forget_unsaved(self) -> list[bytes]:
        """Take back what changed since the last savepoint (or the transaction's
        start): the new objects leave the cache, jar-less and oid-less; returns the
        oids of the changed ones, to invalidate."""
        cache = self._cache
        for oid, obj in self._creating.items():
            if cache.get(oid) is obj:
                del cache[oid]
            obj._p_changed = False
            obj._p_jar = None
            obj._p_oid = None
        return [obj._p_oid for obj in self._registered if obj._p_jar is self]

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
        stale = self._forget_unsaved()
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
