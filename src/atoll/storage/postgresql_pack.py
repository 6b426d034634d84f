"""Pack for :class:`~atoll.storage.postgresql.PostgreSQLStorage`: the storage's side of
the collector's :class:`~atoll.storage.base.PackSession`, and ``VACUUM``.

The walk itself is :mod:`atoll.collection.marking`'s; this module answers its
questions in SQL (the states at the pack tid, one statement per batch of oids; the
revisions committed since a tid, a page at a time) and deletes what it decides under
the storage's commit lock. The statements are in :mod:`atoll.storage.postgresql_sql`.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Container, Iterator, Sequence

import psycopg

from atoll.errors import StorageError
from atoll.ids import u64
from atoll.storage.base import PackSession, PackStats
from atoll.storage.checksum import check as check_checksum
from atoll.storage.postgresql_session import one_value

if TYPE_CHECKING:
    from atoll.storage.postgresql import PostgreSQLStorage, _Session

__all__ = ["PostgreSQLPackSession", "vacuum"]

#: Revisions per page when reading what was committed after a tid.
REVISIONS_PAGE = 2000
#: Oids per DELETE statement of the sweep.
DELETE_BATCH = 5000


class PostgreSQLPackSession(PackSession):
    """One pack of a PostgreSQL schema (see :class:`~atoll.storage.base.PackSession`).

    It runs on a session of its own (so that ``new_oid()`` and friends do not wait
    for it). Until :meth:`lock`, each statement is its own short transaction (the
    walk holds back neither commits nor ``VACUUM``); :meth:`lock` begins a
    transaction holding the commit lock, in which the sweep deletes and commits.
    """

    def __init__(self, storage: PostgreSQLStorage, pack_tid: bytes) -> None:
        self.pack_tid = pack_tid
        self._storage = storage
        self._tid = u64(pack_tid)
        self._session: _Session | None = storage._checkout()
        self._locked = False
        try:
            last = one_value(self._session.conn.execute(storage._sql.LAST_TID))
        except psycopg.Error as e:
            self.close()
            raise self._error(e) from None
        # See SQLitePackSession: a commit with a tid below the pack tid may still
        # become visible during the walk.
        self._after = (min(self._tid, last), 2**63 - 1)  # (tid, zoid) new_revisions has reached

    def _error(self, e: psycopg.Error) -> StorageError:
        from atoll.storage.postgresql import _first_line

        return StorageError(f"PostgreSQL error in {self._storage.name} during pack: {_first_line(e)}")

    def _conn(self) -> psycopg.Connection:
        if self._session is None:
            raise StorageError(f"the pack session of {self._storage.name} is closed")
        return self._session.conn

    def new_revisions(self) -> Iterator[tuple[int, bytes]]:
        q = self._storage._sql
        try:
            while True:
                tid, zoid = self._after
                rows = self._conn().execute(
                    q.REVISIONS_AFTER_PAGE, {"tid": tid, "zoid": zoid, "n": REVISIONS_PAGE}, binary=True
                ).fetchall()
                if not rows:
                    return
                for zoid, tid, state, stored in rows:
                    check_checksum(self._storage.name, zoid, tid, state, stored)
                    if state:  # None or DELETED (b"") refer to nothing
                        yield zoid, state
                    self._after = (tid, zoid)
        except psycopg.Error as e:
            raise self._error(e) from None

    def states(self, oids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        storage, q = self._storage, self._storage._sql
        try:
            if storage.keep_history:
                rows = self._conn().execute(q.LOAD_MANY_HP, (list(oids), self._tid), binary=True).fetchall()
            else:
                rows = self._conn().execute(q.LOAD_MANY_HF, (list(oids),), binary=True).fetchall()
        except psycopg.Error as e:
            raise self._error(e) from None
        # A damaged record could hide references: the pack stops rather than guess.
        for zoid, state, tid, stored in rows:
            check_checksum(storage.name, zoid, tid, state, stored)
        return ((zoid, state) for zoid, state, _, _ in rows if state)

    def lock(self) -> None:
        if self._locked:
            return
        self._storage._lock_commit(self._conn())
        self._locked = True

    def sweep(self, keep: Container[int] | None) -> PackStats:
        assert self._locked, "sweep() needs lock() first"
        storage, q, conn = self._storage, self._storage._sql, self._conn()
        stats = PackStats(size_before=storage.get_size())
        try:
            if keep is not None:
                garbage = array("q")
                with conn.cursor(name="atoll_pack_candidates") as candidates:  # streamed, not fetched whole
                    candidates.itersize = 10_000
                    candidates.execute(q.OBJECTS_NOT_WRITTEN_AFTER, (self._tid,))
                    for (zoid,) in candidates:
                        if zoid not in keep:
                            garbage.append(zoid)
                stats.objects_removed = len(garbage)
                for start in range(0, len(garbage), DELETE_BATCH):
                    part = garbage[start : start + DELETE_BATCH].tolist()
                    stats.revisions_removed += conn.execute(q.PACK_DELETE_OBJECTS, (part,)).rowcount
            if storage.keep_history:
                stats.revisions_removed += conn.execute(q.PACK_DELETE_OLD_REVISIONS, (self._tid,)).rowcount
            stats.transactions_removed = conn.execute(q.PACK_DELETE_TRANSACTIONS).rowcount
            conn.execute(q.SET_LAST_PACK, (str(self._tid),))  # undo refuses what pack may have cut
            conn.execute("COMMIT")
        except psycopg.Error as e:
            raise self._error(e) from None
        finally:
            self.close()
        stats.size_after = storage.get_size()
        return stats

    def close(self) -> None:
        if self._locked:
            self._locked = False
            self._storage._records.clear()  # records of collected objects may be cached
        session, self._session = self._session, None
        self._storage._checkin(session)  # rolls back whatever is left open


def vacuum(storage: PostgreSQLStorage) -> int:
    """``VACUUM (ANALYZE)`` the storage's tables: the space of deleted rows becomes
    reusable (and trailing empty pages go back to the file system) without blocking
    readers or writers; returns the size after. ``VACUUM FULL`` would give back more,
    but locks the tables while it rewrites them: run it by hand in a quiet moment."""
    q = storage._sql
    session = storage._checkout()
    try:
        for statement in (q.VACUUM_STATES, q.VACUUM_TRANSACTIONS):
            session.conn.execute(statement)
    except psycopg.Error as e:
        from atoll.storage.postgresql import _first_line

        raise StorageError(f"PostgreSQL error in {storage.name} during VACUUM: {_first_line(e)}") from None
    finally:
        storage._checkin(session)
    return storage.get_size()
