"""Exceptions raised by atoll.

Every error a user can cause derives from :class:`POSError`, so one ``except``
clause catches them all. Names follow ZODB's so that code written for ZODB
catches the same situations.
"""

from __future__ import annotations

from transaction.interfaces import TransientError

from atoll.ids import oid_repr, tid_repr

__all__ = [
    "POSError",
    "StorageError",
    "ConflictError",
    "ReadConflictError",
    "POSKeyError",
    "InvalidObjectReference",
    "ReadOnlyError",
    "ReadOnlyHistoryError",
    "ConnectionStateError",
    "StorageTransactionError",
    "Unsupported",
    "UndoError",
    "ForbiddenGlobal",
    "BrokenModified",
    "CorruptRecordError",
    "ConnectionLostError",
    "LockTimeoutError",
    "UnpicklableError",
    "ExportError",
]


class POSError(Exception):
    """Base class of every atoll error."""


class StorageError(POSError):
    """A storage could not do what was asked (bad file, broken server, ...)."""


class StorageTransactionError(StorageError):
    """A two-phase-commit call came in the wrong order or for the wrong transaction."""


class ReadOnlyError(StorageError):
    """A write was attempted on a storage opened read-only."""


class Unsupported(StorageError):
    """The storage does not offer this operation (history on a history-free storage, ...)."""


class UndoError(StorageError):
    """An undo could not be performed; ``oid`` names the object that stopped it, when
    one did (changed by a later transaction, and its class could not merge)."""

    def __init__(self, message: str, oid: bytes | None = None) -> None:
        super().__init__(message)
        self.oid = oid


class CorruptRecordError(StorageError):
    """A stored record is damaged: its bytes no longer match the checksum kept with it.

    Raised instead of returning (or unpickling) a record whose bytes changed on disk.
    ``database`` is the storage's name (its file path or server address), ``oid`` and
    ``tid`` name the revision, ``detail`` says what was found. The data cannot be
    trusted: restore the database from a backup, or copy out what is still readable.
    ``Storage.verify()`` lists every damaged record of a storage.
    """

    def __init__(
        self, database: str, oid: bytes | None, tid: bytes | None, detail: str = "checksum mismatch"
    ) -> None:
        self.database = database
        self.oid = oid
        self.tid = tid
        self.detail = detail
        super().__init__(database, oid, tid, detail)

    def __str__(self) -> str:
        where = f"oid {oid_repr(self.oid)}" if self.oid is not None else "a record"
        if self.tid is not None:
            where += f", tid {tid_repr(self.tid)}"
        return f"damaged record in database {self.database!r}: {where}: {self.detail}"


class LockTimeoutError(StorageError):
    """A lock (a storage's commit lock, a database file's write lock, a server row
    lock) was not granted within the storage's lock timeout."""


class POSKeyError(POSError, KeyError):
    """No object with this oid exists (in this snapshot).

    ``args[0]`` is the oid (as for ZODB); ``args[1]``, when given, the database name.
    """

    def __str__(self) -> str:
        if not self.args or not isinstance(self.args[0], bytes):
            return super().__str__()
        where = f" in database {self.args[1]!r}" if len(self.args) > 1 else ""
        return f"no object {oid_repr(self.args[0])}{where}"


class ConflictError(POSError, TransientError):
    """Two transactions changed the same object; the later one must be retried.

    ``oid`` is the object's id, ``serials`` the pair ``(committed, read)``: the
    revision now current in the storage and the one this transaction started from.
    ``class_name`` is the dotted name of the object's class, when known;
    ``reason`` why conflict resolution could not merge, when it was tried.

    The message starts as ZODB's: ``database conflict error (oid ..., class ...,
    serial this txn started with ..., serial currently committed ...)``, then the
    database and the reason, so logs and code that read ZODB's messages read these.
    """

    kind = "database conflict error"

    def __init__(
        self,
        message: str | None = None,
        *,
        oid: bytes | None = None,
        serials: tuple[bytes, bytes] | None = None,
        class_name: str | None = None,
        database_name: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.oid = oid
        self.reason = reason
        self.serials = serials
        self.class_name = class_name
        self.database_name = database_name
        self.message = message or self.kind
        super().__init__(self.message)

    def __str__(self) -> str:
        extras = []
        if self.oid is not None:
            extras.append(f"oid {oid_repr(self.oid)}")
        if self.class_name:
            extras.append(f"class {self.class_name}")
        if self.serials:
            committed, read = self.serials
            extras.append(f"serial this txn started with {tid_repr(read)}")
            extras.append(f"serial currently committed {tid_repr(committed)}")
        text = f"{self.message} ({', '.join(extras)})" if extras else self.message
        if self.database_name:
            text += f" in database {self.database_name!r}"
        if self.reason:
            text += f": {self.reason}"
        return text

    # ZODB's spellings, for code written against its conflict errors.
    def get_oid(self) -> bytes | None:
        """The oid of the object in conflict (ZODB's name for ``oid``)."""
        return self.oid

    def get_class_name(self) -> str | None:
        """The object's dotted class name (ZODB's name for ``class_name``)."""
        return self.class_name

    def get_old_serial(self) -> bytes | None:
        """The revision this transaction started from."""
        return self.serials[1] if self.serials else None

    def get_new_serial(self) -> bytes | None:
        """The revision committed meanwhile."""
        return self.serials[0] if self.serials else None


class ReadConflictError(ConflictError):
    """An object this transaction read (and must stay current) was changed by another."""

    kind = "database read conflict error"


class ConnectionLostError(ConflictError):
    """The connection to the database server was lost during a transaction (a server
    restart, a network failure). Nothing of the transaction was committed; the
    storage reconnects on its next use, so the transaction can simply be retried
    (a :class:`ConflictError`, hence a transient error, for ``transaction``'s
    ``attempts()`` loops)."""

    kind = "database connection lost"


class InvalidObjectReference(POSError):
    """A persistent reference that may not be stored (wrong database, new object in two, ...)."""


class ReadOnlyHistoryError(POSError):
    """A historical connection was asked to change an object."""


class ConnectionStateError(POSError):
    """A connection was used in a state that does not allow it (closed, joined, ...)."""


class ForbiddenGlobal(POSError):
    """A record names a global that atoll does not load (or an object would be written
    naming one): nothing was called or imported, nothing written.

    ``global_name`` is the dotted name the record gives, ``database_name`` and
    ``oid`` say where it is, ``reason`` why it is refused. See ``docs/security.md``.
    """

    def __init__(
        self,
        global_name: str,
        reason: str,
        *,
        database_name: str | None = None,
        oid: bytes | None = None,
    ) -> None:
        self.global_name = global_name
        self.reason = reason
        self.database_name = database_name
        self.oid = oid
        super().__init__(global_name, reason)

    def __str__(self) -> str:
        where = []
        if self.oid is not None:
            where.append(f"object {oid_repr(self.oid)}")
        if self.database_name is not None:
            where.append(f"of database {self.database_name!r}")
        place = f" ({' '.join(where)})" if where else ""
        return f"forbidden global {self.global_name}{place}: {self.reason}"


class BrokenModified(POSError, TypeError):
    """A broken object (one whose class cannot be imported) was changed or stored.

    Broken objects keep their record's state so nothing is lost, but cannot be
    written: restore the class, or map its old name with ``class_aliases``.
    """


class UnpicklableError(POSError, TypeError):
    """An object changed in a transaction cannot be pickled (it holds a lambda, a
    lock, an open file, an instance of a class defined in a function, ...); the
    commit or savepoint fails and nothing is written.

    ``class_name``, ``oid`` and ``database_name`` name the object; ``detail`` says
    where in it the problem is (an attribute path, when one can be found). The
    pickle error is the ``__cause__``. A TypeError too, as pickle's own errors are.
    """

    def __init__(self, class_name: str, oid: bytes | None, database_name: str, detail: str) -> None:
        self.class_name = class_name
        self.oid = oid
        self.database_name = database_name
        self.detail = detail
        super().__init__(
            f"cannot store {class_name} {oid_repr(oid) if oid else '(no oid)'} of database "
            f"{database_name!r}: {detail}"
        )


class ExportError(POSError):
    """An export file that cannot be imported (not an atoll export, damaged, cut
    short, from a newer atoll), or an import refused because references would point
    outside what was exported (see :mod:`atoll.exporting`)."""
