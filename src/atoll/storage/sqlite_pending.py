"""An SQLite file's part in a collection's commit: prepared, finished, dropped, settled.

The protocol (``docs/storages.md``, "One commit for a collection") makes one
durable storage the *decider* and every other one a *member*
(:func:`atoll.storage.base.commit_role`). In an SQLite file:

Decider
    Its vote writes the commit as a file alone would, plus a row of
    ``commit_decisions`` keyed by the transaction's shared id; its finish commits
    both at once (fsynced). That COMMIT is the collection's decision.
Member vote (prepare)
    Writes (:func:`atoll.storage.sqlite_write.insert_commit`) the revisions under the commit's tid and a ``commit_pending`` row (what
    the ``transactions`` row will hold, the decider's home, the time), and commits
    them, fsynced. No ``transactions`` row names the tid, so no snapshot includes
    it: readers do not see the part. The process keeps its in-process commit lock.
Member finish
    In one write transaction: the ``transactions`` row, the history-free deletion
    of replaced revisions, and the pending row's removal. Not fsynced: if power
    loss takes it, the pending row is back and the next open settles it again
    from the durable decision.
Member abort
    Deletes the part's revisions and its pending row.
Settling
    Every writer (an open, a vote, a pack) looks for pending rows first, under the
    write lock, and settles each one before writing anything: it asks the decider
    (:func:`atoll.storage.decisions.outcome`, without holding this file's write
    lock, so that it never waits for a decider while a live committer of that
    decider waits for this file), then, under the write lock again, finishes or
    drops the part if it is still pending. A live process whose part was settled
    by another one finds its pending row gone and its ``transactions`` row there.

Commits to one file only never touch these tables, beyond one ``EXISTS`` in the
vote's first statement.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Callable, ContextManager

from atoll.errors import StorageError
from atoll.ids import p64
from atoll.storage import decisions
from atoll.storage import sqlite_sql as sql

__all__ = ["finish", "drop", "settle", "check_finished"]

log = logging.getLogger(__name__)


def finish(writer: sqlite3.Connection, tid: int, keep_history: bool) -> bool:
    """Turn the prepared part ``tid`` into a committed transaction, inside an open
    write transaction. False if it is not pending and not committed either (a
    recovery dropped it)."""
    row = writer.execute(sql.PENDING_OIDS, (tid,)).fetchone()
    if row is None:
        return writer.execute(sql.HAS_TRANSACTION, (tid,)).fetchone() is not None
    writer.execute(sql.PENDING_TO_TRANSACTION, (tid,))
    if not keep_history:
        packed = row[0]
        zoids = [(int.from_bytes(packed[i : i + 8], "big"), tid) for i in range(0, len(packed), 8)]
        writer.executemany(sql.DELETE_OLDER_REVISIONS, zoids)
    writer.execute(sql.DELETE_PENDING, (tid,))
    return True


def drop(writer: sqlite3.Connection, tid: int) -> None:
    """Delete the prepared part ``tid``, inside an open write transaction (nothing if
    it is no longer pending)."""
    if writer.execute(sql.PENDING_OIDS, (tid,)).fetchone() is not None:
        writer.execute(sql.DELETE_STATES_OF, (tid,))
        writer.execute(sql.DELETE_PENDING, (tid,))


def settle(
    writer: sqlite3.Connection,
    write_transaction: Callable[[sqlite3.Connection], ContextManager],
    name: str,
    keep_history: bool,
) -> int:
    """Finish or drop every part prepared in this file by a process that did not
    finish it, as its decider decided. The caller holds the storage's in-process
    commit lock, and no write transaction. Returns the number settled."""
    settled = 0
    while True:
        pending = writer.execute(sql.SELECT_PENDING).fetchall()
        if not pending:
            return settled
        for tid, txn_id, decider, prepared_at in pending:
            committed = decisions.outcome(decider, txn_id, prepared_at, name)
            with write_transaction(writer):
                if writer.execute(sql.PENDING_OIDS, (tid,)).fetchone() is None:
                    continue  # settled meanwhile by another process
                if committed:
                    finish(writer, tid, keep_history)
                else:
                    drop(writer, tid)
            settled += 1
            verb = "committed" if committed else "dropped"
            log.warning(
                "%s: %s transaction %s (id %s), prepared by a process that stopped, as its decider %s decided",
                name, verb, p64(tid).hex(), txn_id, decisions.describe(decider),
            )


def check_finished(finished: bool, name: str, tid: int) -> None:
    """Raise if a member's finish found its part dropped by a recovery."""
    if not finished:
        raise StorageError(
            f"{name}: transaction {p64(tid).hex()} was dropped by a recovery while this process was "
            "finishing it (its decider had not decided it)"
        )
