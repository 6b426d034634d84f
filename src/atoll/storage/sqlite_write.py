"""Writing to an SQLite file: the write transaction, and a commit's rows.

Shared by the storage's commits (:mod:`atoll.storage.sqlite`), its opening
(:mod:`atoll.storage.sqlite_open`) and the settling of prepared parts
(:mod:`atoll.storage.sqlite_pending`), which all write the same rows.
"""

from __future__ import annotations

import sqlite3
import struct
import time
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from atoll.errors import LockTimeoutError
from atoll.ids import u64, z64
from atoll.storage import sqlite_sql as sql

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["write_transaction", "begin_commit", "insert_commit", "rollback", "moved_oid_epoch"]

_unpack64 = struct.Struct(">Q").unpack
# The checksum of each revision, inline (see atoll.storage.checksum: the same value).
_crc32 = zlib.crc32
_OFFSET = 1 << 31


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction (``BEGIN IMMEDIATE``) on ``conn``, committed when the block
    ends, rolled back when it raises."""
    conn.execute(sql.BEGIN_WRITE)
    try:
        yield conn
        conn.execute(sql.COMMIT)
    except BaseException:
        rollback(conn)  # SQLite may have ended it (disk full, I/O error): the error is the news
        raise


def rollback(writer: sqlite3.Connection) -> None:
    """End ``writer``'s write transaction, if one is open, writing nothing."""
    if writer.in_transaction:
        writer.execute(sql.ROLLBACK)


def moved_oid_epoch(storage: SQLiteStorage, writer: sqlite3.Connection) -> None:
    """Inside the write transaction of a copy or restore that wrote oids no
    new_oid() handed out: move the file's oid epoch, so that other processes whose
    blocks may hold them learn of it (see SQLiteStorage._check_oid_epoch). This
    process has seen to its own block (_skip_oids_of), so it takes the new epoch."""
    writer.execute(sql.BUMP_OID_EPOCH)
    storage._oid_epoch = writer.execute(sql.SELECT_OID_EPOCH).fetchone()[0]


def begin_commit(storage: SQLiteStorage, writer: sqlite3.Connection, doing: str) -> int:
    """``BEGIN IMMEDIATE`` on ``writer`` for a commit (``doing`` names it in the
    timeout error), once whatever a stopped process prepared here is settled; the
    last committed tid (0 for an empty file). The caller holds the commit lock.
    Notes the file's oid epoch (SQLiteStorage._check_oid_epoch)."""
    while True:
        try:
            writer.execute(sql.BEGIN_WRITE)
        except sqlite3.OperationalError as e:
            raise LockTimeoutError(
                f"could not lock {storage.path} for {doing} within {storage.commit_lock_timeout:g} s "
                f"(commit_lock_timeout): {e}"
            ) from None
        last, waiting, epoch = writer.execute(sql.LAST_TID_AND_PENDING).fetchone()
        if not waiting:
            storage._check_oid_epoch(epoch)
            return last or 0
        # Settled without the write lock: see sqlite_pending, "Settling".
        writer.execute(sql.ROLLBACK)
        storage._settle()


def insert_commit(
    writer: sqlite3.Connection,
    tid: int,
    meta: tuple[str, str, bytes, str],
    stores: dict[bytes, tuple[bytes, bytes]],
    oids: list[bytes],
    keep_history: bool,
    partners: int = 0,
    decider: str | None = None,
    counted: int = 0,
) -> int:
    """Write one commit inside an open write transaction: its ``transactions`` row
    (``meta`` is user, description, extension bytes and shared id; ``partners`` is
    kept 0 since the collection's decisions live in ``commit_decisions``), a revision
    per record of ``stores`` (oid -> (read serial, data)) with its checksum
    (:mod:`atoll.storage.checksum`), inserted in the order of ``oids`` (ascending),
    the file's oid counter moved past the highest oid (a copy or import stores oids
    no new_oid() handed out), and in a history-free file the deletion of the
    revisions they replace. With ``decider`` (its home), the commit is a collection
    member's prepared part instead: a ``commit_pending`` row, no ``transactions``
    row, nothing deleted yet (:mod:`atoll.storage.sqlite_pending`). Oids below
    ``counted`` are known to be below the file's counter already (a block this
    process reserved), so a commit of only such oids skips moving it. Returns the
    bytes of record data written."""
    user, description, extension, txn_id = meta
    if decider is None:
        writer.execute(sql.INSERT_TRANSACTION, (tid, user, description, extension, txn_id, b"".join(stores), partners))
    else:
        writer.execute(
            sql.INSERT_PENDING, (tid, txn_id, decider, time.time(), user, description, extension, b"".join(stores))
        )
    per_insert, written, ends = sql.STATES_PER_INSERT, 0, False
    for start in range(0, len(oids), per_insert):
        part = oids[start : start + per_insert]
        params: list = [tid]
        for oid in part:
            data = stores[oid][1]
            zoid = _unpack64(oid)[0]
            params += (zoid, data, _crc32(data, zoid ^ tid) - _OFFSET)
            written += len(data)
            if not data:
                ends = True
        writer.execute(sql.insert_states(len(part)), params)
    if oids:
        highest = _unpack64(oids[-1])[0]
        if highest >= counted:
            writer.execute(sql.ADVANCE_NEXT_OID, (highest + 1,))
    if ends:  # an undone creation: len() must look for ended objects from now on
        writer.execute(sql.MARK_ENDED_OBJECTS)
    if not keep_history and decider is None:
        writer.executemany(sql.DELETE_OLDER_REVISIONS, [(u64(oid), tid) for oid in oids if stores[oid][0] != z64])
    return written
