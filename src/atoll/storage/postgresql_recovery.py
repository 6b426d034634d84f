"""Prepared transactions of :class:`~atoll.storage.postgresql.PostgreSQLStorage`:
their gids, and the recovery of those a crashed process left.

A storage prepares a transaction only as a *member* of a collection's commit
(:func:`atoll.storage.base.commit_role`); a commit of one storage, or the decider's,
is a plain COMMIT. The gid is ``atoll|<schema>|<owner key>|<txn id>|<home id>``:

* *owner key*: each pooled session holds a session-level advisory lock on a random
  key for its whole life. The lock vanishes with the session, so recovery can tell
  a crashed owner (``pg_try_advisory_lock`` succeeds) from a live one (it fails,
  and the transaction is left alone).
* *txn id*: ``TransactionMeta.id``, the key of the collection's decision.
* *home id*: a row of the schema's ``decision_homes``, the address of the
  decider's home (another schema, database or server, or an SQLite file), written
  before the first prepare that names it.

A crashed member's transaction is committed if its decider holds the decision, and
rolled back otherwise (:func:`atoll.storage.decisions.outcome`, which takes the
decider's commit lock before it presumes an abort). Schema version 1 prepared
every commit and recorded decisions in ``atoll_shared.commit_decisions``; a
transaction it left (a gid of four parts) is settled by that table.

Recovery runs when a storage opens, when a committer has waited ``lock_wait`` for
the commit lock, and on demand (:meth:`PostgreSQLStorage.recover`).
"""

from __future__ import annotations

import hashlib
import uuid
from types import SimpleNamespace

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql

from atoll.errors import StorageError
from atoll.storage import decisions
from atoll.storage import postgresql_sql as SQL
from atoll.storage.postgresql_session import one_value

__all__ = ["gid_prefix", "txn_key", "gid", "prepared_gids", "recover", "rollback_prepared"]


def gid_prefix(schema: str) -> str:
    """The start of the gid of every prepared transaction of ``schema``."""
    return f"atoll|{schema}|"


def txn_key(txn_id: str | None) -> str:
    """The key a transaction's participants share: a hash of its shared id (of a
    random one when it has none)."""
    return hashlib.sha1((txn_id or uuid.uuid4().hex).encode()).hexdigest()


def gid(schema: str, owner_key: int, txn_id: str, home_id: int) -> str:
    """The gid of a prepared transaction of ``schema`` by the session holding
    ``owner_key``, for the transaction ``txn_id`` whose decider's home is the row
    ``home_id`` of ``decision_homes``."""
    return f"{gid_prefix(schema)}{owner_key}|{txn_id}|{home_id}"


def two_phase(verb: str, gid: str) -> pg_sql.Composed:
    """``PREPARE TRANSACTION``, ``COMMIT PREPARED`` or ``ROLLBACK PREPARED`` (``verb``)
    of ``gid``: a statement that takes no parameters, so the gid is quoted in it."""
    return pg_sql.SQL(verb + " {}").format(pg_sql.Literal(gid))


def prepared_gids(conn: psycopg.Connection, schema: str) -> list[str]:
    """The gids of the prepared transactions of ``schema``."""
    return [row[0] for row in conn.execute(SQL.PREPARED_OF_SCHEMA, (gid_prefix(schema),))]


def rollback_prepared(conn: psycopg.Connection, schema: str) -> list[str]:
    """Roll back every prepared transaction of ``schema``, live owner or not.

    For tests and for an administrator removing a schema; returns the gids."""
    gids = prepared_gids(conn, schema)
    for each in gids:
        conn.execute(two_phase("ROLLBACK PREPARED", each))
    return gids


def recover(conn: psycopg.Connection, schema: str, q: SimpleNamespace, name: str) -> dict[str, str]:
    """Resolve prepared transactions of ``schema`` whose owning session is gone, on
    ``conn`` (in autocommit); gid -> ``"committed"`` or ``"rolled back"``.
    Transactions whose owner is alive are left alone. ``q`` holds the schema's
    statements, ``name`` names the storage in messages. See the module docstring."""
    outcome: dict[str, str] = {}
    prefix = gid_prefix(schema)
    for each, prepared in conn.execute(SQL.PREPARED_OF_SCHEMA, (prefix,)).fetchall():
        parts = each[len(prefix) :].split("|")
        try:
            owner = int(parts[0])
        except ValueError:
            continue  # not one of ours
        if len(parts) not in (2, 3) or not one_value(conn.execute(SQL.TRY_OWNER_LOCK, (owner,))):
            continue  # its session is alive: it will finish or abort itself
        try:
            decided = _decided(conn, parts, prepared.timestamp(), q, name)
            conn.execute(two_phase("COMMIT PREPARED" if decided else "ROLLBACK PREPARED", each))
            outcome[each] = "committed" if decided else "rolled back"
        except pg_errors.UndefinedObject:
            pass  # another process resolved it first
        finally:
            conn.execute(SQL.OWNER_UNLOCK, (owner,))
    return outcome


def _decided(conn: psycopg.Connection, parts: list[str], prepared_at: float, q: SimpleNamespace, name: str) -> bool:
    """Whether the collection committed the prepared transaction whose gid ends in
    ``parts`` (owner, txn id, home id; version 1: owner, txn key)."""
    if len(parts) == 2:  # prepared by schema version 1: the shared table decides
        if not one_value(conn.execute(SQL.SCHEMA_EXISTS, (SQL.LEGACY_DECISIONS_TABLE,))):
            return False
        return bool(one_value(conn.execute(SQL.LEGACY_DECISION_EXISTS, (parts[1],))))
    row = conn.execute(q.HOME_ADDRESS, (int(parts[2]),)).fetchone()
    if row is None:
        raise StorageError(f"{name}: a prepared transaction names decision home {parts[2]}, which is missing")
    return decisions.outcome(row[0], parts[1], prepared_at, name)
