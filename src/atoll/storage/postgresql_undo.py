"""What the PostgreSQL storage adds to the protocol for undo: its transaction log and
finding the partners of a multi-database commit.

Kept apart from ``postgresql.py``; the statements are in
:mod:`atoll.storage.postgresql_sql`. The ``transactions`` table already keeps each
commit's :func:`~atoll.storage.base.commit_key` (as ``txn_key``, which also names its
prepared transaction), so partners are found by it directly. An undo itself is an
ordinary commit (see :mod:`atoll.undo`); an object it ends is stored as a NULL state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import psycopg

from atoll.errors import StorageError
from atoll.ids import p64, u64, z64
from atoll.storage.base import TransactionInfo, TransactionMeta

if TYPE_CHECKING:
    from atoll.storage.postgresql import PostgreSQLStorage

__all__ = ["transaction_log", "find_transactions", "last_pack"]

_MAX_ID = 2**63 - 1


def transaction_log(storage: PostgreSQLStorage, before: bytes | None, limit: int) -> list[TransactionInfo]:
    """:meth:`Storage.transaction_log`."""
    upper = u64(before) if before is not None else _MAX_ID
    try:
        with storage._admin_conn() as conn:
            rows = conn.execute(storage._sql.TRANSACTIONS_BEFORE, (upper, limit), binary=True).fetchall()
    except psycopg.Error as e:
        raise StorageError(f"PostgreSQL error in {storage.name} reading the transaction log: {e}") from None
    return [
        TransactionInfo(p64(tid), user, description, TransactionMeta.extension_from_bytes(extension), key, size)
        for tid, user, description, extension, key, size in rows
    ]


def last_pack(storage: PostgreSQLStorage) -> bytes:
    """:meth:`Storage.last_pack`: the ``info`` table's ``last_pack`` row, if any."""
    try:
        with storage._admin_conn() as conn:
            row = conn.execute(storage._sql.LAST_PACK).fetchone()
    except psycopg.Error as e:
        raise StorageError(f"PostgreSQL error in {storage.name} reading the last pack: {e}") from None
    return p64(int(row[0])) if row else z64


def find_transactions(
    storage: PostgreSQLStorage, keys: Iterable[str], low: bytes | None, high: bytes | None
) -> dict[str, bytes]:
    """:meth:`Storage.find_transactions`."""
    wanted = sorted(set(keys) - {""})
    if not wanted:
        return {}
    bounds = (u64(low) if low is not None else 0, u64(high) if high is not None else _MAX_ID)
    try:
        with storage._admin_conn() as conn:
            rows = conn.execute(storage._sql.FIND_TRANSACTIONS, (wanted, *bounds)).fetchall()
    except psycopg.Error as e:
        raise StorageError(f"PostgreSQL error in {storage.name} finding transactions: {e}") from None
    return {key: p64(tid) for key, tid in rows}
