"""Pack for :class:`~atoll.storage.sqlite.SQLiteStorage`: old revisions and garbage.

Kept apart from ``sqlite.py`` so that each reads in one sitting; the statements are
in :mod:`atoll.storage.sqlite_sql` with the others.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from atoll.ids import u64
from atoll.storage import sqlite as _sqlite
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import PackStats, Progress, References, walk_step
from atoll.storage.sqlite_write import write_transaction

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["Packer"]

PROGRESS_EVERY = 100_000  # the walk reports every this many objects found


class Packer:
    """One pack of an :class:`SQLiteStorage` (see :meth:`SQLiteStorage.pack`).

    The garbage collector's roots are the root object and every object referenced by a
    revision written after the pack tid (such a commit may have linked an object that
    was unreachable at the pack tid). It walks the states current at the pack tid (at
    the newest state in a history-free file, which keeps no older ones) and removes
    the objects it did not reach that nobody wrote after the pack tid.
    """

    def __init__(self, storage: SQLiteStorage, pack_tid: int, references: References | None) -> None:
        self.storage = storage
        self.pack_tid = pack_tid
        self.references = references
        self.walk_tid = pack_tid if storage.keep_history else _sqlite.MAX_ID  # states the walk reads
        self.reachable: set[int] = set()  # oids reached so far
        self.scanned_upto = pack_tid  # revisions after the pack tid whose references are roots
        self.progress: Progress | None = None

    def run(self, progress: Progress | None) -> PackStats:
        """Walk (without the commit lock), then delete (under it); report to ``progress``."""
        self.progress = progress
        storage = self.storage
        stats = PackStats()
        reader = storage._connect()
        try:
            if self.references is not None:
                reader.execute(sql.BEGIN_READ)
                try:
                    self._walk(reader, self._roots(reader) | {0})
                finally:
                    reader.execute(sql.COMMIT)
            with storage._commit_lock:
                writer = storage._writer
                assert writer is not None
                with write_transaction(writer):
                    self._delete(writer, stats)
        except sqlite3.Error as e:
            raise storage._error(e, "packing") from None
        finally:
            reader.close()
        if progress is not None:
            progress(stats.step(storage.path))
        return stats

    def _roots(self, conn: sqlite3.Connection) -> set[int]:
        """Oids referenced by revisions written after ``scanned_upto``; moves it on."""
        references = self.references
        assert references is not None
        roots: set[int] = set()
        for tid, oids in conn.execute(sql.TRANSACTIONS_AFTER, (self.scanned_upto,)).fetchall():
            ids = _sqlite.json_ids(u64(oid) for oid in _sqlite.split_oids(oids))
            for _, state, _ in conn.execute(self.storage._q.RECORDS_OF_TRANSACTION, (ids, tid)):
                if state:  # DELETED refers to nothing
                    roots.update(u64(ref) for ref in references(state))
            self.scanned_upto = tid
        return roots

    def _walk(self, conn: sqlite3.Connection, roots: set[int]) -> None:
        todo = [oid for oid in roots if oid not in self.reachable]
        self.reachable.update(todo)
        references = self.references
        assert references is not None
        reported = len(self.reachable)
        while todo:
            batch = todo[-_sqlite.BATCH:]
            del todo[-_sqlite.BATCH:]  # from the end: slicing from the front would copy the rest
            if self.progress is not None and len(self.reachable) >= reported + PROGRESS_EVERY:
                reported = len(self.reachable)
                self.progress(walk_step(self.storage.path, reported))
            for _, state, _, _ in conn.execute(self.storage._q.LOAD_MANY_AT, (_sqlite.json_ids(batch), self.walk_tid)):
                for ref in references(state) if state else ():
                    oid = u64(ref)
                    if oid not in self.reachable:
                        self.reachable.add(oid)
                        todo.append(oid)

    def _delete(self, writer: sqlite3.Connection, stats: PackStats) -> None:
        """Under the write lock: finish the walk with what was committed during it, then
        delete old revisions, garbage and empty transactions."""
        if self.storage.keep_history:
            stats.revisions_removed += writer.execute(sql.DELETE_OLD_REVISIONS, (self.pack_tid,)).rowcount
        if self.references is not None:
            self._walk(writer, self._roots(writer))
            garbage = [
                (zoid,)
                for (zoid,) in writer.execute(sql.OBJECTS_NOT_WRITTEN_AFTER, (self.pack_tid,)).fetchall()
                if zoid not in self.reachable
            ]
            if garbage:
                stats.objects_removed = len(garbage)
                stats.revisions_removed += writer.executemany(sql.DELETE_OBJECT, garbage).rowcount
        # Transactions none of whose revisions remain go, except the newest (the last tid).
        live = {tid for (tid,) in writer.execute(sql.LIVE_TIDS)}
        tids = [tid for (tid,) in writer.execute(sql.ALL_TIDS)]
        empty = [(tid,) for tid in tids[:-1] if tid not in live]
        writer.executemany(sql.DELETE_TRANSACTION, empty)
        stats.transactions_removed = len(empty)
        writer.execute(sql.SET_LAST_PACK, (self.pack_tid,))
