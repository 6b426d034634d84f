"""Where a collection's commit decisions live, and how a recovering storage asks.

A commit over several durable storages is decided by one of them, the *decider*
(:func:`atoll.storage.base.commit_role`): its own local commit writes a decision
row keyed by the transaction's shared id, in the same local transaction as its
data. Every other member prepares its part durably, naming the decider's *home*
(:meth:`Storage.decision_home`), an address any process can open:

``sqlite:<absolute path>``
    the decider's SQLite file; decisions in its ``commit_decisions`` table.
``postgresql:<schema>:<conninfo>``
    the decider's PostgreSQL schema; decisions in ``<schema>.commit_decisions``.
    The conninfo never holds a password: libpq finds one in ``PGPASSWORD`` or
    ``~/.pgpass`` as usual.

A member that finds a prepared part whose process is gone calls :func:`outcome`.
A decision row there means commit. No row means abort (*presumed abort*), but only
once the decider's commit lock was taken: the decider votes first and holds its
lock until its commit, so once the lock is free and no row is there, none will
ever be written for that transaction. The lock is waited for at most
:data:`DECIDER_WAIT` seconds, so two recoveries waiting on each other's locks end
in an error (the commit is retried) rather than a deadlock; a decider whose lock
this very thread holds (it is committing) is read at once.

Decisions are kept :data:`RETENTION` seconds, then pruned (pack, and now and then a
commit). A prepared part older than that, whose decision cannot be found, is not
guessed at: :func:`outcome` raises, naming both places.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from urllib.parse import quote

from atoll.errors import StorageError
from atoll.storage import postgresql_sql as pg_sql
from atoll.storage import sqlite_sql

__all__ = [
    "sqlite_home",
    "postgresql_home",
    "outcome",
    "holding",
    "released",
    "describe",
    "DECIDER_WAIT",
    "RETENTION",
]

#: Seconds a recovery waits for a decider's commit lock.
DECIDER_WAIT = 30.0
#: Seconds a decision is kept after its commit.
RETENTION = 30 * 24 * 3600.0

_held = threading.local()  # .homes: the deciders whose commit lock this thread holds


def sqlite_home(path: str) -> str:
    """The home of an SQLite file's decisions."""
    return "sqlite:" + os.path.realpath(path)


def postgresql_home(schema: str, dsn: str) -> str:
    """The home of a PostgreSQL schema's decisions: ``dsn`` without its password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    return f"postgresql:{schema}:{make_conninfo('', **params)}"


def describe(home: str) -> str:
    """A home for messages."""
    kind, _, rest = home.partition(":")
    if kind == "postgresql":
        schema, _, conninfo = rest.partition(":")
        return f"PostgreSQL schema {schema} ({conninfo})"
    return rest


def holding(home: str) -> None:
    """Note that this thread holds the commit lock of the decider at ``home``."""
    homes = getattr(_held, "homes", None)
    if homes is None:
        homes = _held.homes = set()
    homes.add(home)


def released(home: str) -> None:
    """The commit lock of ``home`` is no longer held by this thread."""
    homes = getattr(_held, "homes", None)
    if homes:
        homes.discard(home)


def _held_here(home: str) -> bool:
    homes = getattr(_held, "homes", None)
    return homes is not None and home in homes


def outcome(home: str, txn_id: str, prepared_at: float, asking: str) -> bool:
    """Whether the transaction ``txn_id`` was committed by its decider at ``home``.

    True: it was, the member must commit its prepared part. False: it never will be,
    the member must drop its part. ``prepared_at`` (POSIX time) is when the member
    prepared; ``asking`` names the member, for messages. StorageError when the
    decider cannot be read or locked, or the decision may have been pruned."""
    kind, _, rest = home.partition(":")
    try:
        if kind == "sqlite":
            found = _ask_sqlite(rest, txn_id, locked=_held_here(home))
        elif kind == "postgresql":
            schema, _, conninfo = rest.partition(":")
            found = _ask_postgresql(schema, conninfo, txn_id, locked=_held_here(home))
        else:
            raise StorageError(f"{asking} names an unknown decision home {home!r}")
    except StorageError as e:
        raise StorageError(
            f"{asking} holds a commit prepared by a process that stopped, and its decider "
            f"{describe(home)} cannot be asked ({e}); make it reachable and open {asking} again"
        ) from None
    if not found and time.time() - prepared_at > RETENTION:
        raise StorageError(
            f"{asking} holds a commit prepared on {time.ctime(prepared_at)}, older than the decisions "
            f"{describe(home)} keeps: atoll cannot tell whether it committed"
        )
    return found


def _ask_sqlite(path: str, txn_id: str, locked: bool) -> bool:
    try:
        conn = sqlite3.connect(
            f"file:{quote(path)}?mode=rw", uri=True, timeout=DECIDER_WAIT, isolation_level=None
        )
    except sqlite3.Error as e:
        raise StorageError(f"cannot open {path}: {e}") from None
    try:
        if not conn.execute(sqlite_sql.HAS_DECISIONS_TABLE).fetchone()[0]:
            found = False  # a file that never decided anything
        else:
            found = conn.execute(sqlite_sql.SELECT_DECISION, (txn_id,)).fetchone() is not None
        if found or locked:
            return found
        # The decider may be committing right now: its write lock settles it.
        conn.execute(sqlite_sql.BEGIN_WRITE)
        try:
            return conn.execute(sqlite_sql.SELECT_DECISION, (txn_id,)).fetchone() is not None
        finally:
            conn.execute(sqlite_sql.ROLLBACK)
    except sqlite3.Error as e:
        raise StorageError(f"{path}: {e}") from None
    finally:
        conn.close()


def _ask_postgresql(schema: str, conninfo: str, txn_id: str, locked: bool) -> bool:
    import psycopg
    from psycopg import sql

    q = pg_sql.queries(sql.Identifier(schema).as_string(None))
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise StorageError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    try:
        found = conn.execute(q.SELECT_DECISION, (txn_id,)).fetchone() is not None
        if found or locked:
            return found
        conn.execute("BEGIN")
        try:
            conn.execute(f"SET LOCAL lock_timeout = {int(DECIDER_WAIT * 1000)}")
            conn.execute(q.LOCK_COMMIT).fetchone()
            return conn.execute(q.SELECT_DECISION, (txn_id,)).fetchone() is not None
        finally:
            conn.execute("ROLLBACK")
    except psycopg.Error as e:
        raise StorageError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    finally:
        conn.close()
