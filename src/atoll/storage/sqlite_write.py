"""Writing to an SQLite file: the write transaction, and a commit's rows.

Shared by the storage's commits (:mod:`atoll.storage.sqlite`), its opening
(:mod:`atoll.storage.sqlite_open`) and the settling of prepared commits
(:mod:`atoll.storage.sqlite_prepared`), which all write the same rows.
"""

from __future__ import annotations

import sqlite3
import struct
from contextlib import contextmanager
from typing import Iterator

from atoll.ids import u64, z64
from atoll.storage import sqlite_sql as sql

__all__ = ["write_transaction", "insert_commit"]

_unpack64 = struct.Struct(">Q").unpack


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction (``BEGIN IMMEDIATE``) on ``conn``, committed when the block
    ends, rolled back when it raises."""
    conn.execute(sql.BEGIN_WRITE)
    try:
        yield conn
        conn.execute(sql.COMMIT)
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise


def insert_commit(
    writer: sqlite3.Connection,
    tid: int,
    meta: tuple[str, str, bytes, str],
    stores: dict[bytes, tuple[bytes, bytes]],
    oids: list[bytes],
    keep_history: bool,
) -> int:
    """Write one commit inside an open write transaction: its ``transactions`` row
    (``meta`` is user, description, extension bytes and shared id), a revision per
    record of ``stores`` (oid -> (read serial, data)), inserted in the order of
    ``oids``, and in a history-free file the deletion of the revisions they replace.
    Returns the bytes of record data written."""
    user, description, extension, txn_id = meta
    writer.execute(sql.INSERT_TRANSACTION, (tid, user, description, extension, txn_id, b"".join(stores)))
    per_insert, written, ends = sql.STATES_PER_INSERT, 0, False
    for start in range(0, len(oids), per_insert):
        part = oids[start : start + per_insert]
        params: list = [tid]
        for oid in part:
            data = stores[oid][1]
            params += (_unpack64(oid)[0], data)
            written += len(data)
            if not data:
                ends = True
        writer.execute(sql.insert_states(len(part)), params)
    if ends:  # an undone creation: len() must look for ended objects from now on
        writer.execute(sql.MARK_ENDED_OBJECTS)
    if not keep_history:
        writer.executemany(sql.DELETE_OLDER_REVISIONS, [(u64(oid), tid) for oid in oids if stores[oid][0] != z64])
    return written
