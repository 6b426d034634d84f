"""Read-ahead: a connection's records loaded before their objects are touched.

Two sources fill it. ``Connection.get()`` and ``Connection.prefetch()`` load records
on request. And ghosts created together (the references of one record) are likely
touched together, so the first miss on one of them loads the next few of its group
in one batch (:meth:`ReadAhead.load`), and what those records refer to in other
databases of the collection too. The batch of a group doubles with each miss in it
(a scan); the first batch of a new group grows while whole batches get used and
shrinks when loaded records go unused (random access).

Everything here is valid for one snapshot of the connection's view, so it is
dropped whenever the snapshot moves (:meth:`ReadAhead.moved`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from atoll.serialize import foreign_references, references

if TYPE_CHECKING:
    from atoll.connection import Connection

__all__ = ["ReadAhead"]

# Read-ahead bounds: ghosts remembered per connection, and records per batch.
SIBLINGS_LIMIT = 1_000_000
SIBLINGS_MIN_WINDOW = 8
SIBLINGS_MAX_WINDOW = 256


class _Siblings:
    """The oids of ghosts created by one record, in reference order."""

    __slots__ = ("oids", "window", "_positions")

    def __init__(self, oids: list[bytes], window: int) -> None:
        self.oids = oids
        self.window = window  # records the next miss loads; doubles with each miss
        self._positions: dict[bytes, int] | None = None  # oid -> index, made on first miss

    def after(self, oid: bytes) -> list[bytes]:
        """The next ``window - 1`` oids after ``oid``."""
        if self._positions is None:
            self._positions = {sibling: index for index, sibling in enumerate(self.oids)}
        index = self._positions[oid]
        return self.oids[index + 1 : index + self.window]


class ReadAhead:
    """One connection's read-ahead state and logic (see the module docstring)."""

    __slots__ = ("_connection", "records", "_siblings", "_first_window")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        # Records loaded ahead of their objects; a record goes when its object loads.
        self.records: dict[bytes, tuple[bytes, bytes]] = {}
        self._siblings: dict[bytes, _Siblings] = {}  # ghost oid -> the group it was created in
        self._first_window = SIBLINGS_MIN_WINDOW  # the first batch of a new group

    def keep(self, oid: bytes) -> tuple[bytes, bytes]:
        """The record of ``oid``, loaded unless already here, and kept for when its
        ghost is first touched (``get()`` reads the class from it)."""
        record = self.records.get(oid)
        if record is None:
            record = self.records[oid] = self._connection._load(oid)
        return record

    def prefetch(self, oids: Iterable[bytes]) -> None:
        """Load the records of those of ``oids`` whose objects are ghosts or not in
        the cache, and that are not here yet, in one round trip."""
        cache = self._connection._cache
        wanted = []
        for oid in oids:
            if oid in self.records:
                continue
            obj = cache.get(oid)
            if obj is None or obj._p_changed is None:
                wanted.append(oid)
        if wanted:
            self.records.update(self._connection._view.load_many(wanted))

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        """The record of a ghost being touched: taken from here if loaded ahead, else
        loaded, with the next siblings it was created with."""
        record = self.records.pop(oid, None)
        if record is not None:
            return record
        connection = self._connection
        group = self._siblings.pop(oid, None)
        if group is None:
            return connection._load(oid)
        batch = [oid]
        cache, prefetched, siblings = connection._cache, self.records, self._siblings
        for sibling in group.after(oid):
            if siblings.pop(sibling, None) is None or sibling in prefetched:
                continue
            obj = cache.get(sibling)
            if obj is not None and obj._p_changed is None:
                batch.append(sibling)
        if group.window > self._first_window:  # a later miss: the group is being scanned
            self._first_window = group.window
        group.window = min(group.window * 2, SIBLINGS_MAX_WINDOW)
        loaded = connection._view.load_many(batch)
        prefetched.update(loaded)
        if len(connection._db.databases) > 1:
            self._prefetch_foreign(loaded)
        record = prefetched.pop(oid, None)
        return record if record is not None else connection._load(oid)

    def remember(self, created: list[bytes]) -> None:
        """Note ghosts created together (by one record), for read-ahead."""
        if len(created) > 1 and len(self._siblings) < SIBLINGS_LIMIT:
            # One group object for all: a tuple per ghost would burden the cyclic GC.
            self._siblings.update(dict.fromkeys(created, _Siblings(created, self._first_window)))

    def moved(self) -> None:
        """The snapshot moved: forget everything, and read ahead less if the records
        loaded ahead went unused."""
        if len(self.records) > SIBLINGS_MIN_WINDOW:  # read ahead in vain
            self._first_window = max(SIBLINGS_MIN_WINDOW, self._first_window // 2)
        self.clear()

    def clear(self) -> None:
        """Forget every record and group."""
        self.records.clear()
        self._siblings.clear()

    def _prefetch_foreign(self, records: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Read ahead in other databases too: what these records refer to there.

        Each object of a batch may refer to one object of another database (a
        partner); those ghosts appear one at a time, as the batch is unpickled, so
        they never form a group of their own. Their oids are in the records."""
        connection = self._connection
        wanted: dict[str, list[bytes]] = {}
        here = connection._db.database_name
        for data, _ in records.values():
            found = foreign_references(data)  # [] at once for a record without one
            for database_name, oid in references(data) if found is None else found:
                if database_name is not None and database_name != here:
                    wanted.setdefault(database_name, []).append(oid)
        for database_name, oids in wanted.items():
            other = connection.connections.get(database_name)
            if other is None and database_name in connection._db.databases:
                other = connection.get_connection(database_name)
            if other is not None:
                other.prefetch(oids)
