"""Undo in one database: what to write, and the data manager that writes it.

Undoing transaction T writes, for each object T wrote, the revision T replaced (or
:data:`~atoll.storage.base.DELETED` for an object T created), as a new commit with
T's revision as the read serial. So an undo is an ordinary commit, through an
ordinary connection: it inherits the storages' conflict check, crash safety and
multi-database protocol, history stays intact, and the undo itself can be undone.

If a later transaction changed one of T's objects, T's revision is no longer
current: the object's class is asked to merge, exactly as for a write-write
conflict, with ``old`` = T's state, ``committed`` = the current state, ``new`` = the
state before T (a BTree bucket merges when the changes touch different keys). When
it cannot, the commit fails with :class:`~atoll.errors.UndoError` naming the oid.
That happens at commit against the committing view's snapshot, and again at vote
(the storage's own check, through the connection) for what others committed after
it.

:class:`UndoPart` is the undo's data manager in one database of one transaction.
At commit it hands its records to the connection of that database that commits in
the same transaction, or opens one of its own: two commits to one storage in one
transaction would wait on each other's lock.

Which databases an undo touches (a multi-database commit is undone in all of them)
is decided in :mod:`atoll.collection.undo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import transaction

from atoll.errors import ConflictError, ReadOnlyError, UndoError
from atoll.ids import oid_repr, tid_repr, z64
from atoll.storage.base import DELETED, Storage, StorageView

if TYPE_CHECKING:
    from atoll.connection import Connection
    from atoll.db import DB

__all__ = ["UndoPart", "undo_id", "parse_undo_id", "check_undoable", "undo_records", "undo_error"]

#: oid -> (read serial: T, or z64 when T ended the object; data to write; serial of
#: the revision before T, or z64 when there was none).
Plan = dict[bytes, tuple[bytes, bytes, bytes]]

# Key under which a transaction keeps its undo parts, by database name.
_PARTS = object()


def undo_id(database_name: str, tid: bytes) -> bytes:
    """The ``id`` of an undo log entry: the tid and the database it is from, so that
    any member of a collection can undo an entry of another's log."""
    return f"{tid.hex()}@{database_name}".encode()


def parse_undo_id(id: bytes | str) -> tuple[str | None, bytes]:
    """``(database name or None, tid)`` of an undo id; UndoError if it is not one.
    A bare 8-byte tid is accepted too (the database is then the caller's)."""
    if isinstance(id, bytes) and len(id) == 8:
        return None, id
    text = id.decode("ascii", "replace") if isinstance(id, bytes) else str(id)
    tid_hex, at, name = text.partition("@")
    try:
        tid = bytes.fromhex(tid_hex)
    except ValueError:
        tid = b""
    if len(tid) != 8:
        raise UndoError(f"{id!r} is not an undo id: take one from db.undoLog()")
    return (name if at else None), tid


def check_undoable(storage: Storage, database_name: str) -> None:
    """Raise ReadOnlyError or UndoError (saying why) if ``storage`` cannot undo."""
    if storage.read_only:
        raise ReadOnlyError(f"database {database_name!r} is read-only: it cannot undo")
    if not storage.keep_history:
        raise UndoError(
            f"database {database_name!r} keeps no history (keep_history=False): "
            "the revisions an undo would restore are gone"
        )


def undo_records(storage: Storage, database_name: str, tid: bytes) -> Plan:
    """What undoing transaction ``tid`` of ``storage`` writes (see :data:`Plan`),
    read through the storage protocol: the transaction's records, and the revisions
    current just before it."""
    packed = storage.last_pack()
    if tid <= packed:
        raise UndoError(
            f"transaction {tid_repr(tid)} of database {database_name!r} is not after its last pack "
            f"({tid_repr(packed)}): the revisions it replaced are gone"
        )
    records = None
    for txn_record in storage.iterator(tid, tid):
        if txn_record.tid == tid:
            records = txn_record.records
    if records is None:
        raise UndoError(
            f"database {database_name!r} has no transaction {tid_repr(tid)}: it was packed away, "
            "or the id is from another database"
        )
    view = storage.open_view(before=tid)
    try:
        before = view.load_many([record.oid for record in records])
    finally:
        view.release()
    plan: Plan = {}
    for record in records:
        data, serial = before.get(record.oid, (DELETED, z64))
        plan[record.oid] = (tid if record.data is not None else z64, data, serial)
    return plan


class UndoPart:
    """The undo's data manager in one database of one transaction (see the module
    docstring). Made by :meth:`for_transaction`; :meth:`add` takes each plan."""

    def __init__(self, db: DB, txn: Any) -> None:
        self._db = db
        self.transaction_manager = None  # joined to a transaction directly, not via a manager
        # oid -> (read serial, data, serial before, the undone tid this came from)
        self._records: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}
        self.undone: list[bytes] = []  # the tids undone here, for tests and repr
        self._private: Connection | None = None  # opened when no connection commits here

    @classmethod
    def for_transaction(cls, db: DB, txn: Any) -> UndoPart:
        """The part of ``db`` in ``txn``, joined to it on first use."""
        try:
            parts = txn.data(_PARTS)
        except KeyError:
            parts = {}
            txn.set_data(_PARTS, parts)
        part = parts.get(db.database_name)
        if part is None:
            part = parts[db.database_name] = cls(db, txn)
            txn.join(part)
        return part

    @staticmethod
    def existing(db: DB, txn: Any) -> UndoPart | None:
        """The part of ``db`` in ``txn`` if there is one already."""
        try:
            return txn.data(_PARTS).get(db.database_name)
        except KeyError:
            return None

    def __repr__(self) -> str:
        return f"<UndoPart of {self._db.database_name!r}: {len(self.undone)} transactions>"

    def add(self, tid: bytes, plan: Plan) -> None:
        """Undo transaction ``tid`` too. Undoing several transactions that wrote one
        object restores the revision before the oldest of them, when they follow one
        another for that object; UndoError when another transaction came between."""
        merged = dict(self._records)
        for oid, (read, data, before) in plan.items():
            held = merged.get(oid)
            if held is None:
                merged[oid] = (read, data, before, tid)
            elif held[3] < tid and before == held[3]:  # tid rewrote what the held one wrote
                merged[oid] = (read, held[1], held[2], tid)
            elif tid < held[3] and held[2] == tid:  # the held one rewrote what tid wrote
                merged[oid] = (held[0], data, before, held[3])
            else:
                raise UndoError(
                    f"cannot undo {tid_repr(tid)} and {tid_repr(held[3])} of database "
                    f"{self._db.database_name!r} together: object {oid_repr(oid)} was changed "
                    "between them",
                    oid=oid,
                )
        self._records = merged
        self.undone.append(tid)

    # -- the transaction package's data-manager protocol --------------------------

    def sortKey(self) -> str:
        # Beside the connections to the same storage: locks are taken in this order.
        return f"{self._db.storage.sort_key()}:undo"

    def abort(self, txn: Any) -> None:
        self.tpc_abort(txn)  # commit() may have begun the private connection's commit

    def tpc_begin(self, txn: Any) -> None:
        pass  # the connection to write through is chosen once every one has begun

    def commit(self, txn: Any) -> None:
        from atoll.connection import committing_connection

        connection = committing_connection(txn, self._db.storage)
        if connection is None:
            connection = self._private = self._db._open_connection(transaction.TransactionManager(), None, None)
            connection.tpc_begin(txn)
        connection._check_undo(self._records)
        connection._add_undo(self._against(connection._view, connection._db.database_name))

    def _against(self, view: StorageView, database_name: str) -> dict[bytes, tuple[bytes, bytes]]:
        """The records to store, as of the view's snapshot.

        A storage may skip its conflict check when nothing was committed since the
        snapshot (see ``StorageView.store``), so read serials must be the ones the
        snapshot shows: an object changed since the undone transaction is merged
        here, with the snapshot's state as the committed one, or refused."""
        current = view.load_many(self._records)
        stores = {}
        for oid, (read, data, _, _) in self._records.items():
            now_data, now_serial = current.get(oid, (None, z64))
            if now_serial == read:
                stores[oid] = (read, data)
                continue
            if read == z64 or now_data is None or data == DELETED:
                raise undo_error(oid, database_name, None)
            try:
                merged = self._db.resolve_conflict(oid, now_serial, read, now_data, view.load_serial(oid, read), data)
            except ConflictError as exc:
                raise undo_error(oid, database_name, exc.class_name) from exc
            stores[oid] = (now_serial, merged)
        return stores

    def tpc_vote(self, txn: Any) -> None:
        if self._private is not None:
            self._private.tpc_vote(txn)

    def tpc_finish(self, txn: Any) -> None:
        if self._private is not None:
            try:
                self._private.tpc_finish(txn)
            finally:
                self._close_private()

    def tpc_abort(self, txn: Any) -> None:
        if self._private is not None:
            try:
                self._private.tpc_abort(txn)
            finally:
                self._close_private()

    def _close_private(self) -> None:
        private, self._private = self._private, None
        if private is not None:
            private.close()

    # -- savepoints --------------------------------------------------------------

    def savepoint(self) -> _UndoSavepoint:
        return _UndoSavepoint(self)


class _UndoSavepoint:
    """Rolling back forgets the undos added since the savepoint."""

    def __init__(self, part: UndoPart) -> None:
        self._part = part
        self._records = dict(part._records)
        self._undone = list(part.undone)

    def rollback(self) -> None:
        self._part._records = dict(self._records)
        self._part.undone = list(self._undone)


def undo_error(oid: bytes, database_name: str, class_name: str | None) -> UndoError:
    """The error of an undo stopped by a later change to ``oid``."""
    what = f"object {oid_repr(oid)}" + (f" ({class_name})" if class_name else "")
    return UndoError(
        f"cannot undo: {what} of database {database_name!r} was changed by a later transaction "
        "and its class could not merge the changes",
        oid=oid,
    )

