"""What every backend's view does alike in a commit: the buffer of stores and read
checks between ``tpc_begin`` and ``tpc_vote``, and the conflict check run under the
commit lock. The protocol these implement is in :mod:`atoll.storage.base`; each view
class (memory, SQLite, PostgreSQL) mixes in :class:`CommitBuffer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from atoll.errors import ConflictError, POSKeyError, ReadConflictError, ReadOnlyError, StorageTransactionError
from atoll.ids import z64
from atoll.storage.base import DELETED, Resolver, TransactionMeta

__all__ = ["CommitBuffer", "check_conflicts", "moved_serials"]


def moved_serials(
    stores: Mapping[bytes, tuple[bytes, bytes]],
    read_checks: Mapping[bytes, bytes],
    committed: Callable[[bytes], bytes],
) -> dict[bytes, bytes]:
    """For a backend that can tell the serial now committed of any oid
    (``committed``; ``z64`` for an object with no revision): the oids a commit wrote
    or checked whose serial is not the one it read, as :func:`check_conflicts`
    takes them."""
    moved = {}
    for oid, serial in read_checks.items():
        if oid not in stores and (now := committed(oid)) != serial:
            moved[oid] = now
    for oid, (read_serial, _) in stores.items():
        if (now := committed(oid)) != read_serial:
            moved[oid] = now
    return moved


def check_conflicts(
    stores: dict[bytes, tuple[bytes, bytes]],
    read_checks: Mapping[bytes, bytes],
    moved: Mapping[bytes, bytes],
    load_serial: Callable[[bytes, bytes], bytes],
    load_current: Callable[[bytes], bytes],
    resolve: Resolver | None,
) -> set[bytes]:
    """The conflict check every backend runs in ``tpc_vote``, under its commit lock.

    ``stores`` maps oid -> (read_serial, data) of this commit, ``read_checks`` oid ->
    serial for ``check_current``. ``moved`` holds only the oids of either whose
    committed serial is no longer the one the commit read: oid -> the serial now
    committed (``z64`` for an object with no revision), found however the backend
    finds them fastest (one query in SQLite, :func:`moved_serials` elsewhere).
    ``load_serial`` is the view's (POSKeyError for a revision that is gone),
    ``load_current`` the committed data of an oid.

    Raises ReadConflictError or ConflictError, else replaces each record that
    ``resolve`` merged in ``stores`` (now read from the committed serial) and
    returns the merged oids.
    """
    for oid in read_checks:
        if oid not in stores and oid in moved:
            raise ReadConflictError(oid=oid, serials=(moved[oid], read_checks[oid]))
    resolved = set()
    for oid, committed in moved.items():
        if oid not in stores:
            continue
        read_serial, data = stores[oid]
        if resolve is None or read_serial == z64 or committed == z64 or data == DELETED:
            raise ConflictError(oid=oid, serials=(committed, read_serial))
        try:
            old: bytes | None = load_serial(oid, read_serial)
        except POSKeyError:
            old = None
        stores[oid] = (committed, resolve(oid, committed, read_serial, load_current(oid), old, data))
        resolved.add(oid)
    return resolved


class CommitBuffer:
    """The part of a view's commit every backend does alike: between ``tpc_begin``
    and ``tpc_vote``, stores and read checks wait in memory.

    A view class mixes this in, sets ``before``, ``snapshot`` and ``_storage``
    (which has ``name``, ``read_only`` and ``_check_open()``), and calls
    ``_reset_buffer()`` in its constructor and whenever a commit ends.
    """

    before: bytes | None
    snapshot: bytes
    _storage: Any

    def _reset_buffer(self) -> None:
        self._meta: TransactionMeta | None = None  # set between tpc_begin and finish/abort
        self._stores: dict[bytes, tuple[bytes, bytes]] = {}  # oid -> (read serial, data)
        self._checks: dict[bytes, bytes] = {}  # oid -> serial that must stay current

    def tpc_begin(self, meta: TransactionMeta) -> None:
        """Start a commit. ReadOnlyError on a read-only storage or historical view."""
        storage = self._storage
        storage._check_open()
        if storage.read_only:
            raise ReadOnlyError(f"storage {storage.name} is read-only")
        if self.before is not None:
            raise ReadOnlyError("a historical view cannot commit")
        if self._meta is not None:
            raise StorageTransactionError("tpc_begin called twice without finish or abort")
        self._meta = meta

    def store(self, oid: bytes, read_serial: bytes, data: bytes) -> None:
        """Queue a new revision of ``oid`` that replaces ``read_serial``."""
        if self._meta is None:
            raise StorageTransactionError("store outside a commit")
        self._stores[oid] = (read_serial, data)

    def store_many(self, records: Mapping[bytes, tuple[bytes, bytes]]) -> None:
        """Queue several new revisions: oid -> ``(read_serial, data)``."""
        if self._meta is None:
            raise StorageTransactionError("store outside a commit")
        self._stores.update(records)

    def check_current(self, oid: bytes, serial: bytes) -> None:
        """Require ``serial`` to be ``oid``'s current revision at vote time."""
        if self._meta is None:
            raise StorageTransactionError("check_current outside a commit")
        self._checks[oid] = serial

    def _check_voting(self) -> TransactionMeta:
        """The commit's metadata; StorageTransactionError outside a commit."""
        if self._meta is None:
            raise StorageTransactionError("tpc_vote outside a commit")
        return self._meta

    def _resolve_conflicts(
        self,
        last: bytes,
        moved: Callable[[], Mapping[bytes, bytes]],
        load_current: Callable[[bytes], bytes],
        resolve: Resolver | None,
    ) -> set[bytes]:
        """:func:`check_conflicts` over this commit, in ``tpc_vote`` under the commit
        lock, ``last`` being the newest committed tid; ``moved()`` finds the moved
        serials (see there). When nothing was committed since the snapshot, every
        serial the commit read is still current (its connection ghosted whatever
        changed before), so nothing can conflict and the check is skipped: a serial
        from another snapshot is the caller's error (see :meth:`StorageView.store`).
        Except when the commit creates an object whose oid comes from a block the
        storage gave up because a copy may have stored oids in it
        (:mod:`atoll.storage.oid_blocks`): that oid may be taken, which the check
        turns into a ConflictError.
        """
        if not (self._stores or self._checks):
            return set()
        stale = getattr(self._storage, "_stale_blocks", None)
        if last == self.snapshot and not (stale is not None and stale.hold_created(self._stores)):
            return set()
        return check_conflicts(self._stores, self._checks, moved(), self.load_serial, load_current, resolve)

    if TYPE_CHECKING:

        def load_serial(self, oid: bytes, serial: bytes) -> bytes: ...
