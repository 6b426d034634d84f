"""The storage protocol: the one interface between DB/Connection and a backend.

A storage keeps object records: for each oid, a sequence of revisions, each named by
the tid of the transaction that wrote it. Records are opaque bytes here (their format
is :mod:`atoll.serialize`'s business); a storage never unpickles them, except through
callables it is handed (``resolve`` for conflicts).

There are two objects:

* :class:`Storage`, one per database, shared by every connection and thread of the
  process. It hands out oids, opens views, and does whole-database work (history,
  iteration, pack, size).
* :class:`StorageView`, one per connection. A view reads from a *snapshot*, the tid
  of the last transaction it has seen: every load returns the revision current as of
  that tid, whatever other processes commit meanwhile. A view's snapshot is set
  when it opens; ``poll()`` moves it to the newest committed transaction and says
  which oids changed. A view also commits, in two phases.

Invariants every backend keeps (the contract tests in ``tests/storage`` check them):

1. Tids are 8-byte timestamps (:mod:`atoll.ids`) that strictly increase with every
   commit of a storage, across processes.
2. A view's loads are repeatable: until the next ``poll()``, ``load(oid)`` returns the
   same ``(data, serial)``; serial is the tid that wrote that revision and is never
   greater than the snapshot.
3. Two-phase commit: ``tpc_begin`` -> ``store``/``store_many``/``check_current``... -> ``tpc_vote`` ->
   ``tpc_finish`` or ``tpc_abort``. ``tpc_vote`` takes the storage's commit lock,
   detects conflicts and raises :class:`~atoll.errors.ConflictError` (or resolves them
   through ``resolve``), and allocates the tid. After ``tpc_vote`` returns, the
   commit can no longer fail for a reason of the data: ``tpc_finish`` only makes it
   durable and visible, then releases the lock. ``tpc_abort`` may be called at any
   point after ``tpc_begin`` and leaves no trace. Locks are taken in ``tpc_vote``,
   which the transaction package calls in ``sort_key()`` order, so several storages
   committing together cannot deadlock. Several durable storages committing one
   transaction follow the collection protocol of :func:`commit_role`: one of them
   decides, the others prepare, and a crash at any step leaves the transaction in
   all of them or in none once each is opened again.
4. A committed transaction is atomic: every view sees all of its records or none.
5. ``new_oid()`` never returns the same oid twice for one storage, across processes,
   and never the root oid, nor an oid that exists: a commit that stores an oid
   ``new_oid()`` never handed out (a copy, an import) moves the counter past it,
   for every process of the storage.
6. Every revision is stored with a checksum (CRC-32 of the data, seeded by the oid and
   tid); a load whose bytes do not match raises
   :class:`~atoll.errors.CorruptRecordError` naming the database, oid and tid,
   never returns the damaged bytes. ``verify()`` lists every damaged record.
   Revisions written before checksums existed (older files) carry none and are
   returned unchecked.
7. A storage never imports :mod:`atoll.connection` or :mod:`atoll.db`.
8. A record of zero bytes (:data:`DELETED`) stored for an oid ends that object: from
   its tid on, loads raise POSKeyError, ``load_serial`` of it raises POSKeyError,
   iteration reports it with ``data`` None, ``len()`` leaves the object out, and the
   object has no current serial (a later store gives ``z64`` as its read serial, as
   for a new object; no load returns the ending tid, so no caller can give that).
   Undoing the transaction that created an object writes one;
   nothing else does (records of real objects are never empty).

Undo (history-preserving storages only) needs nothing beyond this protocol to write:
an undo is an ordinary commit of the revisions that came before (see
:mod:`atoll.undo`). To find what to undo, and the partners of a multi-database
commit, storages list their transactions (:meth:`Storage.transaction_log`) and
find them again by the key every participant of one commit records
(:meth:`Storage.find_transactions`, :func:`commit_key`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Generator, Iterable, Iterator, Mapping, NamedTuple, Protocol, Sequence, overload, runtime_checkable

from atoll.classes import DEFAULT_POLICY, STANDARD_GLOBALS
from atoll.errors import (
    CorruptRecordError,
    ForbiddenGlobal,
    StorageError,
)
from atoll.ids import new_tid
from atoll.progress import Progress, ProgressStep

__all__ = [
    "TransactionMeta",
    "verify_step",
    "commit_tid",
    "TransactionInfo",
    "DELETED",
    "commit_key",
    "Member",
    "CommitMembers",
    "CommitRole",
    "commit_role",
    "DataRecord",
    "TransactionRecord",
    "HistoryEntry",
    "PackStats",
    "PackSession",
    "Resolver",
    "References",
    "Progress",
    "Storage",
    "StorageView",
    "check_metadata_key",
    "DamagedRecord",
]


@dataclass(frozen=True)
class Member:
    """One storage taking part in a commit, as the collection's commit protocol sees it.

    ``order_key`` is the key the transaction package orders votes and finishes by
    (the connection's ``sortKey()``); ``home`` is the storage's
    :meth:`Storage.decision_home`, None for a storage that cannot keep a decision
    durably (memory).
    """

    order_key: str
    home: str | None


class CommitMembers(Sequence[Member]):
    """The :class:`Member` of every storage taking part in one commit, gathered while
    the commit begins: the one part of a commit's description that changes.

    Whoever runs the commit owns it and adds each storage's Member as it begins that
    storage (:meth:`add`); the ``TransactionMeta`` of every storage of the commit
    holds the same object, as a read-only sequence. The transaction package begins
    every participant before it votes any, so the sequence is complete when a storage
    reads it, in ``tpc_vote`` (:func:`commit_role`), and not before.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: list[Member] = []  # in the order the storages began

    def add(self, member: Member) -> None:
        """Add the Member of a storage the commit has just begun."""
        self._members.append(member)

    @overload
    def __getitem__(self, index: int) -> Member: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Member]: ...

    def __getitem__(self, index: int | slice) -> Member | Sequence[Member]:
        return self._members[index]

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members)

    def __repr__(self) -> str:
        return f"CommitMembers({self._members!r})"


@dataclass(frozen=True)
class CommitRole:
    """What one storage does in a commit (see ``docs/storages.md``, "One commit for a
    collection").

    ``alone``: no other durable storage takes part: commit in one phase, as if there
    were no collection. ``decider``: this storage's own commit is the collection's
    decision: write the decision (keyed by ``TransactionMeta.id``) in the same local
    transaction as the data, and commit in one phase. Otherwise the storage is a
    *member*: its vote makes its part durable but invisible (prepared), its finish
    makes it visible, and recovery asks ``decider_home`` for the decision.
    """

    alone: bool
    decider: bool
    decider_home: str | None


_ALONE = CommitRole(alone=True, decider=True, decider_home=None)


def commit_role(meta: "TransactionMeta") -> CommitRole:
    """This storage's role in the commit ``meta`` describes.

    The decider is the durable member that votes (and finishes) first: the one
    with the smallest ``order_key``. So when any other member has prepared, the
    decider holds its commit lock until its own commit has decided, and a recovery
    that takes that lock and finds no decision knows none will ever be written.
    """
    durable = [m for m in meta.members if m.home is not None]
    if len(durable) < 2 or not meta.id:
        return _ALONE
    first = min(durable, key=lambda m: m.order_key)
    if first.order_key == meta.order_key:
        return CommitRole(alone=False, decider=True, decider_home=first.home)
    return CommitRole(alone=False, decider=False, decider_home=first.home)


@dataclass(frozen=True)
class TransactionMeta:
    """What a commit records besides object data.

    ``id`` is the same for every storage that takes part in one transaction of a
    multi-database collection: the collection's commit decision is keyed by it.
    ``members`` holds the :class:`Member` of every storage taking part, this one
    included: a tuple when the caller knows them all at once, else the commit's
    :class:`CommitMembers`, which grows while the other storages begin and is complete
    when ``tpc_vote`` runs. ``order_key`` is this storage's own ``Member.order_key``.
    :func:`commit_role` tells a storage what to do with them.
    """

    user: str = ""
    description: str = ""
    extension: Mapping[str, object] = field(default_factory=dict)
    id: str = ""
    members: Sequence[Member] = ()
    order_key: str = ""
    #: Commit with exactly this tid instead of a new one (a copy keeps the source's
    #: tids); it must be later than the storage's last transaction. See commit_tid.
    tid: bytes | None = None

    def extension_bytes(self) -> bytes:
        """The extension dict as stored (a pickle; empty bytes for no extension)."""
        return pickle.dumps(dict(self.extension), 3) if self.extension else b""

    @staticmethod
    def extension_from_bytes(data: bytes | None) -> dict:
        """The inverse of :meth:`extension_bytes`. Read as records are, safely: it
        may name standard data types only (``docs/security.md``), else
        ForbiddenGlobal, and nothing it names is called."""
        return _ExtensionUnpickler(io.BytesIO(data)).load() if data else {}


class _ExtensionUnpickler(pickle.Unpickler):
    """Transaction extensions are written by anyone who can write the database, as
    records are: they may name the standard data types of :mod:`atoll.classes`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in STANDARD_GLOBALS:
            raise ForbiddenGlobal(
                f"{module}.{name}", "a transaction's extension may name only standard data types (see docs/security.md)"
            )
        return DEFAULT_POLICY.standard(module, name)


def commit_tid(meta: TransactionMeta, last: bytes | None) -> bytes:
    """The tid a commit gets in ``tpc_vote``, given the storage's last tid: a new one
    (later than ``last``, from the clock) or the one ``meta.tid`` asks for, which
    must be later than ``last`` (invariant 1), else StorageError."""
    if meta.tid is None:
        return new_tid(last)
    if len(meta.tid) != 8:
        raise StorageError(f"a commit's tid must be 8 bytes, not {meta.tid!r}")
    if last is not None and meta.tid <= last:
        raise StorageError(
            f"cannot commit with tid {meta.tid.hex()}: the storage's last transaction "
            f"{last.hex()} is not older (tids only increase)"
        )
    return meta.tid


#: The record that ends an object (see invariant 7): what undoing its creation stores.
DELETED = b""


def commit_key(meta_id: str) -> str:
    """The key a storage records for a commit whose :attr:`TransactionMeta.id` is
    ``meta_id``: equal in every storage that took part in one multi-database
    commit, and "" for a commit without an id (the initial root creation).

    A digest rather than the id itself, because that is what the PostgreSQL
    storage keeps (it names its prepared transactions by it)."""
    return hashlib.sha1(meta_id.encode()).hexdigest() if meta_id else ""


@dataclass(frozen=True)
class TransactionInfo:
    """One committed transaction, as :meth:`Storage.transaction_log` lists it."""

    tid: bytes
    user: str
    description: str
    extension: dict
    #: :func:`commit_key` of the commit's shared id: the same in its partners.
    key: str
    #: Bytes of record data the transaction wrote (still there: pack may remove some).
    size: int


class DataRecord(NamedTuple):
    """One revision of one object, as iteration returns it; ``data`` None means deleted.

    A named tuple rather than a dataclass: a copy makes one per revision, and a
    tuple is made in a fifth of the time."""

    oid: bytes
    tid: bytes
    data: bytes | None


@dataclass
class TransactionRecord:
    """One committed transaction, as :meth:`Storage.iterator` returns it."""

    tid: bytes
    user: str
    description: str
    extension: dict
    records: list[DataRecord]

    def __iter__(self) -> Iterator[DataRecord]:
        return iter(self.records)


@dataclass(frozen=True)
class HistoryEntry:
    """One revision of an object, as :meth:`Storage.history` returns it."""

    tid: bytes
    time: float
    user_name: str
    description: str
    size: int

    def as_dict(self) -> dict:
        """ZODB's history form: a dict with ``tid``, ``serial``, ``time``, ..."""
        return {
            "tid": self.tid,
            "serial": self.tid,
            "time": self.time,
            "user_name": self.user_name,
            "description": self.description,
            "size": self.size,
        }


@dataclass(frozen=True)
class DamagedRecord:
    """One damaged revision, as :meth:`Storage.verify` reports it.

    ``database`` is the storage's name, ``oid``/``tid`` the revision (``tid`` None
    when the damage hides it), ``detail`` what was wrong."""

    database: str
    oid: bytes
    tid: bytes | None
    detail: str

    def error(self) -> CorruptRecordError:
        """The error a load of this revision raises."""
        return CorruptRecordError(self.database, self.oid, self.tid, self.detail)

    def __str__(self) -> str:
        return str(self.error())


@dataclass
class PackStats:
    """What a pack removed."""

    revisions_removed: int = 0
    objects_removed: int = 0
    transactions_removed: int = 0
    #: Bytes the storage reported before and after (:meth:`Storage.get_size`).
    size_before: int = 0
    size_after: int = 0

    def step(self, name: str) -> ProgressStep:
        """The line a pack of the storage named ``name`` reports when it is done."""
        text = (
            f"packed {name}: removed {self.revisions_removed} revisions, "
            f"{self.objects_removed} objects, {self.transactions_removed} transactions"
        )
        return ProgressStep(f"packing {name}", self.revisions_removed, unit="revisions removed", finished=True, text=text)


class Resolver(Protocol):
    """Merges a write-write conflict, or raises ConflictError.

    Called during ``tpc_vote`` for an object this transaction stored from revision
    ``read_serial`` while ``committed_serial`` is now current. ``old_data`` is the
    revision the transaction started from (None if the storage no longer has it).
    Returns the merged record to write instead of ``new_data``.
    """

    def __call__(
        self,
        oid: bytes,
        committed_serial: bytes,
        read_serial: bytes,
        committed_data: bytes,
        old_data: bytes | None,
        new_data: bytes,
    ) -> bytes: ...


#: Given a record, every persistent reference it holds as ``(database_name, oid)``,
#: database_name None for the record's own database (:func:`atoll.serialize.references`).
References = Callable[[bytes], Iterable[tuple["str | None", bytes]]]



@runtime_checkable
class PackSession(Protocol):
    """One pack of one storage: the few operations the collection's garbage
    collector (:mod:`atoll.collection.marking`) needs, so that one walk, written
    once, packs every backend and every mix of backends.

    Oids are integers here (:func:`atoll.ids.u64`): the collector marks them in a
    bitmap. A pack as of ``pack_tid`` keeps, for each object, its revision current
    at ``pack_tid`` and every later one; it removes older revisions, and, when the
    collector passes the set of oids to keep, every object that has no revision
    after ``pack_tid`` and is not in that set.

    The sequence: :meth:`new_revisions` and :meth:`states`, any number of times,
    while commits go on; then :meth:`lock`, which holds off commits; then
    :meth:`new_revisions` once more (what was committed meanwhile); then
    :meth:`sweep`. :meth:`close` ends the session at any point and releases every
    lock and connection; a session closed before ``sweep`` changed nothing.
    """

    pack_tid: bytes

    def new_revisions(self) -> Iterator[tuple[int, bytes]]:
        """``(oid, record)`` of the revisions committed after ``pack_tid`` or after
        the session began (whichever is earlier), that earlier calls did not
        return (a history-free storage: the current record of each object written
        since). The collector keeps these objects and follows their references: a
        commit after the pack time may link an object that was unreachable at it,
        and a commit that lands during the walk may move an object from a state
        the walk has not read yet to one it has."""

    def states(self, oids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """``(oid, record)`` for each of ``oids``: its revision current at
        ``pack_tid`` (a history-free storage: its current one). Oids without such
        a revision are left out. Called with up to a few thousand oids at once: a
        backend answers in one query."""

    def lock(self) -> None:
        """Hold off commits (every process's) until :meth:`sweep` or :meth:`close`."""

    def sweep(self, keep: Container[int] | None) -> PackStats:
        """Under the lock: remove the revisions older than each object's revision
        at ``pack_tid``, then, if ``keep`` is given, every object not in it that has
        no revision after ``pack_tid``, then the transactions left with no
        revision (except the newest); make it durable and release the lock."""

    def close(self) -> None:
        """Release the lock and connections (rolling back an unswept session)."""


@runtime_checkable
class StorageView(Protocol):
    """One connection's window on a storage: snapshot reads and two-phase commit.

    A view is used by one thread at a time. Historical views (opened with
    ``before``) have a fixed snapshot: ``poll()`` returns an empty set and the commit
    methods raise :class:`~atoll.errors.ReadOnlyError`.
    """

    #: The tid reads come from (the newest transaction seen when the view opened or
    #: last polled; ``z64`` for an empty storage).
    snapshot: bytes

    def poll(self) -> set[bytes] | None:
        """Move the snapshot to the newest committed transaction.

        Returns the oids changed between the old snapshot and the new one by other
        views' commits (the view's own commits are left out: its caller already
        holds those states), or None when the view cannot tell (too far behind) and
        the caller must forget everything it cached.
        """

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        """``(data, serial)`` of ``oid`` as of the snapshot; POSKeyError if none."""

    def load_many(self, oids: Iterable[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        """Several loads in one round trip; oids that do not exist are left out."""

    def load_serial(self, oid: bytes, serial: bytes) -> bytes:
        """The revision of ``oid`` written by ``serial``, even one newer than the
        snapshot (conflict resolution reads the committed state); POSKeyError if gone."""

    def new_oid(self) -> bytes:
        """An oid never used before (same as the storage's)."""

    def tpc_begin(self, meta: TransactionMeta) -> None:
        """Start a commit. ReadOnlyError on a read-only storage or historical view."""

    def store(self, oid: bytes, read_serial: bytes, data: bytes) -> None:
        """Queue a new revision of ``oid``; ``read_serial`` is the revision it
        replaces: the one this view's snapshot shows (``z64`` for a new object).
        A backend may skip the conflict check when nothing was committed since
        the snapshot, so a serial from another snapshot is a caller's error."""

    def store_many(self, records: Mapping[bytes, tuple[bytes, bytes]]) -> None:
        """:meth:`store` for several records: oid -> ``(read_serial, data)``."""

    def check_current(self, oid: bytes, serial: bytes) -> None:
        """Make the commit fail with ReadConflictError unless ``serial`` is still
        ``oid``'s current revision at vote time (``readCurrent``)."""

    def tpc_vote(self, resolve: Resolver | None = None) -> set[bytes]:
        """Lock, check conflicts, allocate the tid, and make the data ready to commit.

        Returns the oids whose stored data was replaced by a resolved merge: the
        caller's copies of those objects are stale.
        """

    def tpc_finish(self) -> bytes:
        """Make the commit durable and visible, release the lock, return the tid.

        The snapshot does not move: transactions that others committed before
        this one are reported by the next ``poll()``, this one is not."""

    def tpc_abort(self) -> None:
        """Forget the commit in progress and release any lock."""

    def release(self) -> None:
        """Give back what the view holds (read transaction, server connection)."""

    def close(self) -> None:
        """Release the view for good: abort any commit in progress and close its own
        database connection (SQLite connection, server sessions), at once rather
        than when the garbage collector finds the view. A connection pool calls
        this for a connection it drops. The view is not used again after it;
        idempotent."""


@runtime_checkable
class Storage(Protocol):
    """A database's records. Shared by all threads; must be thread-safe."""

    #: Human-readable name: a path, a DSN without password, "memory".
    name: str
    read_only: bool
    keep_history: bool

    def open_view(self, before: bytes | None = None) -> StorageView:
        """A new view; with ``before``, a read-only view of the state before that tid."""

    def new_oid(self) -> bytes:
        """An oid never used before in this storage (see invariant 5)."""

    def last_transaction(self) -> bytes:
        """The tid of the newest committed transaction (``z64`` when empty)."""

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        """Up to ``size`` revisions of ``oid``, newest first; POSKeyError if none."""

    def iterator(
        self, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[TransactionRecord]:
        """Committed transactions with tids in ``[start, stop]``, oldest first."""

    def restore_transactions(self, transactions: Iterable[TransactionRecord]) -> int:
        """Commit ``transactions`` as they are: each with its own tid, user,
        description, extension and records (``data`` None: :data:`DELETED`; an oid
        listed twice keeps its last record, see
        :func:`atoll.storage.restore.last_of_each_oid`), each a transaction of its
        own, in the order given. Returns the bytes of record data written.

        What a copy or a restore from a backup writes, many transactions at a time:
        tids must strictly increase and be later than :meth:`last_transaction`
        (else StorageError, before the offending transaction is written); records
        replace whatever revision is current, without a conflict check (the caller
        is the one writer of what it restores; a commit by someone else in between
        can still make a transaction fail with ConflictError); the oid counter is
        moved past every oid written (invariant 5).

        A failure part way (an error from the storage, or raised by
        ``transactions`` itself), or a crash, leaves whole transactions only: a
        leading part of the ones given, none of them in a storage that writes the
        batch as one unit (SQLite, PostgreSQL). So a copy that restarts from
        :meth:`last_transaction` continues where it stopped. The caller bounds
        the batch (its records are held in memory until it is written).

        This default commits each transaction through a view's two-phase commit
        (:func:`atoll.storage.restore.restore_over_views`); a backend overrides it
        to write many transactions in one write transaction of its own."""
        from atoll.storage.restore import restore_over_views

        return restore_over_views(self, transactions)

    def restore_from(self, source: Storage, start: bytes | None = None) -> Generator[tuple[int, int, int], None, None] | None:
        """A faster way than ``restore_transactions(source.iterator(start))`` to
        copy ``source``'s transactions from ``start`` (all when None) into this
        storage, or None when this storage has none for such a source (the caller
        then goes through the iterator). The iterator copies one batch per step and
        yields its (transactions, revisions, bytes of record data) once committed;
        what it writes, and what an interruption leaves, are as for
        :meth:`restore_transactions`. Transactions the source commits while it runs
        may be left to a later copy.

        SQLite, from another SQLite file of the same history mode, copies inside
        SQLite (:mod:`atoll.storage.sqlite_copy`); this default has no such way."""
        return None

    def pack_session(self, pack_tid: bytes) -> PackSession:
        """Start a pack as of ``pack_tid`` (see :class:`PackSession`);
        ReadOnlyError on a read-only storage. Packs are driven by
        :mod:`atoll.collection.marking`, which walks every storage of a collection
        with the same code."""

    def get_metadata(self) -> dict[str, str]:
        """Every value written with :meth:`set_metadata` (by any process), by key."""

    def set_metadata(self, key: str, value: str) -> None:
        """Durably write one value, in a transaction of its own, replacing any
        earlier value of ``key``. Keys are dotted names (``"collection.name"``),
        kept apart from the storage's own settings; ValueError for a key without a
        dot. Writing different keys never loses either (no read-modify-write), so
        a set is kept as one key per member. ReadOnlyError on a read-only storage."""

    def vacuum(self) -> int:
        """Give the space of removed records back to the file system where the
        backend can (SQLite: free pages truncated, log emptied; PostgreSQL:
        ``VACUUM`` of the storage's tables); returns :meth:`get_size` after."""

    def verify(self, progress: Progress | None = None) -> list[DamagedRecord]:
        """Read every stored revision and return those whose bytes do not match their
        checksum (or cannot be read at all), oldest damage first; an empty list
        when the storage is sound. Runs beside commits, from one read snapshot;
        ``progress`` receives a line now and then on a large storage. Revisions
        written before checksums existed are counted as unchecked, not damaged."""

    def transaction_log(self, before: bytes | None = None, limit: int = 100) -> list[TransactionInfo]:
        """Up to ``limit`` committed transactions with tids below ``before`` (all
        when None), newest first: the undo log reads it page by page."""

    def last_pack(self) -> bytes:
        """The pack tid of the newest pack (``z64`` if never packed). The revisions a
        transaction at or before it replaced may be gone, so undo refuses it."""

    def note_pack(self, pack_tid: bytes) -> None:
        """Record that revisions replaced at or before ``pack_tid`` may be missing,
        as after a pack (:meth:`last_pack` becomes the later of the two): what a
        copy of a packed storage carries over, so that undo refuses here what it
        refuses there. ReadOnlyError on a read-only storage."""

    def find_transactions(
        self, keys: Iterable[str], low: bytes | None = None, high: bytes | None = None
    ) -> dict[str, bytes]:
        """key -> tid of the transactions committed with these :func:`commit_key`
        values (tids in ``[low, high]`` when given): how the databases of a
        collection find the partners of a multi-database commit. Keys not found
        are left out. Without bounds this reads the whole transaction log."""

    def __len__(self) -> int:
        """The number of objects with a current revision, the root included."""

    def get_size(self) -> int:
        """Bytes the storage takes where it lives (SQLite: the file and its log;
        PostgreSQL: its tables and indexes; memory: the records)."""

    def sort_key(self) -> str:
        """A string that orders storages for two-phase commit: unique per storage
        (two instances opened on the same data have the same key) and stable."""

    def decision_home(self) -> str | None:
        """Where this storage keeps a collection's commit decisions, as an address
        any process can open (:mod:`atoll.storage.decisions`); None when it cannot
        keep one durably (memory). Members of a commit record the decider's home
        with their prepared part, so that whoever opens them next finds the
        decision (see :func:`commit_role`)."""

    def close(self) -> None:
        """Release everything; further use raises StorageError. Idempotent."""


def verify_step(name: str, read: int, damaged: int, unchecked: int = 0, finished: bool = False) -> ProgressStep:
    """The progress line every backend's :meth:`Storage.verify` reports: revisions
    read so far (or in all, when ``finished``), how many were damaged, and how many
    were written before checksums (so could not be checked)."""
    extra = f", {unchecked} written before checksums (unchecked)" if finished and unchecked else ""
    verb = "verified" if finished else "verifying"
    text = f"{verb} {name}: {read} revisions read, {damaged} damaged{extra}"
    return ProgressStep(f"verifying {name}", read, unit="revisions", finished=finished, text=text)


def check_metadata_key(key: str) -> None:
    """ValueError unless ``key`` is a dotted name, as :meth:`Storage.set_metadata` takes."""
    if not isinstance(key, str) or "." not in key.strip(".") or key != key.strip():
        raise ValueError(f"metadata keys are dotted names such as 'collection.name', not {key!r}")
