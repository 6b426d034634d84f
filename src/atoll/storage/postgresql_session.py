"""A PostgreSQL server session as the storage and its views hold it, and how a lost
one is recognised: shared by :mod:`atoll.storage.postgresql` (the storage) and
:mod:`atoll.storage.postgresql_view` (the views)."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from atoll.errors import StorageError

__all__: list[str] = []

T = TypeVar("T")


class _SessionLost(StorageError):
    """The storage's own session was lost; the next use makes a new one."""


def _lost(conn: psycopg.Connection | None) -> bool:
    """Whether ``conn`` can no longer be used (the server or network ended it)."""
    return conn is None or conn.closed or conn.broken


def one_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The row of a statement that always returns one (an aggregate, a function's
    result, a row that must exist)."""
    row = cursor.fetchone()
    assert row is not None, "the statement returned no row"
    return row


def one_value(cursor: psycopg.Cursor[Any]) -> Any:
    """The one column of :func:`one_row`."""
    return one_row(cursor)[0]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Session:
    """One server connection, in autocommit, holding its owner lock (see above)."""

    __slots__ = ("conn", "owner_key", "__weakref__")

    def __init__(self, conn: psycopg.Connection, owner_key: int) -> None:
        self.conn = conn
        self.owner_key = owner_key  # advisory lock held for the session's life

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def rollback(self) -> None:
        if not self.conn.closed and self.in_transaction():
            self.conn.execute("ROLLBACK")
