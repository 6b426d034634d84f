"""What the SQLite storage adds to the protocol for undo: its transaction log, finding
the partners of a multi-database commit, and objects ended by an undone creation.

Kept apart from ``sqlite.py`` so that each reads in one sitting; the statements are
in :mod:`atoll.storage.sqlite_sql`. An undo itself is an ordinary commit (see
:mod:`atoll.undo`); nothing here writes.
"""

from __future__ import annotations

import sqlite3
import struct
from typing import TYPE_CHECKING, Iterable

from atoll.ids import p64, u64, z64
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import TransactionInfo, TransactionMeta, commit_key

if TYPE_CHECKING:
    from atoll.storage.sqlite import SQLiteStorage

__all__ = ["transaction_log", "find_transactions", "last_pack", "count_objects", "no_serial_when_ended"]

#: The largest tid SQLite can hold: "no upper bound".
_MAX_ID = 2**63 - 1


def transaction_log(storage: SQLiteStorage, before: bytes | None, limit: int) -> list[TransactionInfo]:
    """:meth:`Storage.transaction_log`, read in one snapshot."""
    storage._check_open()
    upper = u64(before) if before is not None else _MAX_ID
    with storage._lock:
        conn = storage._reader
        try:
            conn.execute(sql.BEGIN_READ)
            try:
                infos = []
                for tid, user, description, extension, txn_id, oids in conn.execute(
                    sql.TRANSACTIONS_BEFORE, (upper, limit)
                ).fetchall():
                    # The oids as a JSON array of numbers, in C-level steps (a loop per
                    # oid in Python cost as much as the query).
                    ids = "[" + ",".join(map(str, struct.unpack(f">{len(oids) // 8}Q", oids))) + "]"
                    size = conn.execute(sql.SIZE_OF_TRANSACTION, (ids, tid)).fetchone()[0]
                    infos.append(
                        TransactionInfo(
                            p64(tid),
                            user,
                            description,
                            TransactionMeta.extension_from_bytes(extension),
                            commit_key(txn_id),
                            size,
                        )
                    )
            finally:
                conn.execute(sql.COMMIT)
        except sqlite3.Error as e:
            raise storage._error(e, "reading the transaction log") from None
    return infos


def find_transactions(
    storage: SQLiteStorage, keys: Iterable[str], low: bytes | None, high: bytes | None
) -> dict[str, bytes]:
    """:meth:`Storage.find_transactions`. The file keeps the shared ids themselves and
    no index on them, so this reads the ids of every transaction in the range (a
    multi-database commit's partners are found by a narrow range first: see
    :mod:`atoll.collection.undo`)."""
    storage._check_open()
    wanted = set(keys) - {""}
    if not wanted:
        return {}
    bounds = (u64(low) if low is not None else 0, u64(high) if high is not None else _MAX_ID)
    found: dict[str, bytes] = {}
    with storage._lock:
        conn = storage._reader
        try:
            for tid, txn_id in conn.execute(sql.TRANSACTION_IDS, bounds):
                key = commit_key(txn_id)
                if key in wanted:
                    found[key] = p64(tid)
        except sqlite3.Error as e:
            raise storage._error(e, "finding transactions") from None
    return found


def last_pack(storage: SQLiteStorage) -> bytes:
    """:meth:`Storage.last_pack`: ``atoll_meta``'s ``last_pack`` row, if any."""
    storage._check_open()
    with storage._lock:
        conn = storage._reader
        try:
            row = conn.execute(sql.SELECT_LAST_PACK).fetchone()
        except sqlite3.Error as e:
            raise storage._error(e, "reading the last pack") from None
    return p64(int(row[0])) if row else z64


def count_objects(conn: sqlite3.Connection) -> int:
    """``len()``: objects with a revision, less those an undo ended (looked for only
    in a file where a commit ended one)."""
    conn.execute(sql.BEGIN_READ)
    try:
        count = conn.execute(sql.COUNT_OBJECTS).fetchone()[0]
        if conn.execute(sql.HAS_ENDED_OBJECTS).fetchone():
            count -= conn.execute(sql.COUNT_ENDED_OBJECTS).fetchone()[0]
    finally:
        conn.execute(sql.COMMIT)
    return count


def no_serial_when_ended(
    writer: sqlite3.Connection,
    moved: dict[bytes, bytes],
    stores: dict[bytes, tuple[bytes, bytes]],
    checks: dict[bytes, bytes],
) -> None:
    """Correct the conflict check's moved serials (oid -> serial now committed) for
    objects whose newest revision is DELETED: those have no current serial (``z64``,
    invariant 7 of :mod:`atoll.storage.base`), so a store that expects none did not
    move.

    The check query compares ``max(tid)`` (an index-only read); moved serials are
    rare, so looking at the revision itself is left to here."""
    for oid, serial in list(moved.items()):
        if serial == z64:
            continue
        row = writer.execute(sql.reads().LOAD_SERIAL, (u64(oid), u64(serial))).fetchone()
        if row is not None and not row[0]:
            expected = stores[oid][0] if oid in stores else checks.get(oid, z64)
            if expected == z64:
                del moved[oid]
            else:
                moved[oid] = z64
