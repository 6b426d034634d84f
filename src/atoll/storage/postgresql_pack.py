"""Pack for :class:`~atoll.storage.postgresql.PostgreSQLStorage`: old revisions and
garbage.

Kept apart from ``postgresql.py`` so that each reads in one sitting (as
:mod:`atoll.storage.sqlite_pack` is for SQLite); the statements are in
:mod:`atoll.storage.postgresql_sql` with the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from atoll.errors import StorageError
from atoll.ids import ROOT_OID, u64
from atoll.storage.base import PackStats, Progress, References, walk_step

if TYPE_CHECKING:
    from atoll.storage.postgresql import PostgreSQLStorage

__all__ = ["Packer"]

BATCH = 5000  # oids per statement when loading many (the walk)
PROGRESS_EVERY = 100_000  # the walk reports every this many objects found


class Packer:
    """One pack of a :class:`PostgreSQLStorage` (see :meth:`PostgreSQLStorage.pack`).

    It runs under the commit lock, on a session of its own (so that ``new_oid()`` and
    friends do not wait for it): commits wait while it decides and deletes.
    """

    def __init__(self, storage: PostgreSQLStorage, pack_tid: int, references: References | None) -> None:
        self.storage = storage
        self.pack_tid = pack_tid
        self.references = references

    def run(self, progress: Progress | None) -> PackStats:
        """Walk, then delete, in one transaction; report to ``progress``."""
        from atoll.storage.postgresql import _first_line

        storage = self.storage
        stats = PackStats()
        t = self.pack_tid
        q = storage._sql
        session = storage._checkout()
        conn = session.conn
        try:
            storage._lock_commit(conn)
            reachable = self._reachable(conn, self.references, progress) if self.references is not None else None
            doomed: list[int] = []
            for zoid, later, count in conn.execute(q.PACK_OBJECTS, (t,)):
                if reachable is not None and zoid not in reachable and not later:
                    doomed.append(zoid)
                    stats.revisions_removed += count
            if doomed:
                conn.execute(q.PACK_DELETE_OBJECTS, (doomed,))
            stats.objects_removed = len(doomed)
            if storage.keep_history:
                stats.revisions_removed += conn.execute(q.PACK_DELETE_OLD_REVISIONS, (t,)).rowcount
            stats.transactions_removed = conn.execute(q.PACK_DELETE_TRANSACTIONS).rowcount
            conn.execute(q.SET_LAST_PACK, (str(t),))
            conn.execute("COMMIT")
        except psycopg.Error as e:
            raise StorageError(f"PostgreSQL error in {storage.name} during pack: {_first_line(e)}") from None
        finally:
            storage._checkin(session)  # rolls back whatever is left open
        if progress is not None:
            progress(stats.step(storage.name))
        return stats

    def _reachable(self, conn: psycopg.Connection, references: References, progress: Progress | None) -> set[int]:
        """Oids that must survive the pack: the root, every object written after the
        pack tid, and everything their states reference, transitively.

        History-preserving: an object's references are read from its state at the pack
        tid and from each later revision, so an object linked only after it is kept.
        History-free: only current states exist, and those are followed."""
        storage, t = self.storage, self.pack_tid
        q = storage._sql
        seen = {u64(ROOT_OID)} | {row[0] for row in conn.execute(q.WRITTEN_AFTER, (t,))}
        todo = list(seen)
        reported = len(seen)
        while todo:
            batch = todo[-BATCH:]
            del todo[-BATCH:]  # from the end: slicing from the front would copy the rest
            if progress is not None and len(seen) >= reported + PROGRESS_EVERY:
                reported = len(seen)
                progress(walk_step(storage.name, reported))
            if storage.keep_history:
                rows = conn.execute(q.STATES_FROM, {"oids": batch, "t": t}, binary=True)
            else:
                rows = conn.execute(q.LOAD_MANY_HF, (batch,), binary=True)
            for row in rows:
                state = row[1]
                if state is None:
                    continue
                for ref in references(state):
                    ref_int = u64(ref)
                    if ref_int not in seen:
                        seen.add(ref_int)
                        todo.append(ref_int)
        return seen
