"""Prepared transactions of :class:`~atoll.storage.postgresql.PostgreSQLStorage`:
their gids, and the recovery of those a crashed process left.

The gid of a commit's prepared transaction is ``atoll|<schema>|<owner key>|<txn key>``:

* *owner key*: each pooled session holds a session-level advisory lock on a random
  key for its whole life. The lock vanishes with the session, so recovery can tell
  a crashed owner (``pg_try_advisory_lock`` succeeds) from a live one (it fails,
  and the transaction is left alone).
* *txn key*: a hash of ``TransactionMeta.id``, which every participant of one
  multi-database transaction shares. Each prepared transaction also inserts
  ``(txn key, schema)`` into ``atoll_shared.commit_decisions``; that row becomes
  visible exactly when its participant commits. The commit decision is reached when
  the first participant's ``tpc_finish`` commits, so: a crashed prepared
  transaction is committed if some partner's decision row is visible, and rolled
  back otherwise (for a single database: its finish never ran). A crash during the
  first ``COMMIT PREPARED`` leaves every participant either committed or prepared
  with no visible row, so all of them end the same way. This needs the participants
  to share one PostgreSQL database (any schemas); across servers recovery cannot
  see a partner's decision and rolls back.

Recovery runs when a storage opens, when a committer has waited ``lock_wait`` for
the commit lock, and on demand (:meth:`PostgreSQLStorage.recover`).
"""

from __future__ import annotations

import hashlib
import uuid

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql

from atoll.storage import postgresql_sql as SQL

__all__ = ["gid_prefix", "txn_key", "gid", "prepared_gids", "recover", "rollback_prepared"]


def gid_prefix(schema: str) -> str:
    """The start of the gid of every prepared transaction of ``schema``."""
    return f"atoll|{schema}|"


def txn_key(txn_id: str | None) -> str:
    """The key a transaction's participants share: a hash of its shared id (of a
    random one when it has none)."""
    return hashlib.sha1((txn_id or uuid.uuid4().hex).encode()).hexdigest()


def gid(schema: str, owner_key: int, key: str) -> str:
    """The gid of a prepared transaction of ``schema`` by the session holding
    ``owner_key``, for the transaction whose :func:`txn_key` is ``key``."""
    return f"{gid_prefix(schema)}{owner_key}|{key}"


def prepared_gids(conn: psycopg.Connection, schema: str) -> list[str]:
    """The gids of the prepared transactions of ``schema``."""
    return [row[0] for row in conn.execute(SQL.PREPARED_OF_SCHEMA, (gid_prefix(schema),))]


def rollback_prepared(conn: psycopg.Connection, schema: str) -> list[str]:
    """Roll back every prepared transaction of ``schema``, live owner or not.

    For tests and for an administrator removing a schema; returns the gids."""
    gids = prepared_gids(conn, schema)
    for each in gids:
        conn.execute(pg_sql.SQL("ROLLBACK PREPARED {}").format(pg_sql.Literal(each)))
    return gids


def recover(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    """Resolve prepared transactions of ``schema`` whose owning session is gone, on
    ``conn`` (in autocommit); gid -> ``"committed"`` or ``"rolled back"``.
    Transactions whose owner is alive are left alone. See the module docstring."""
    outcome: dict[str, str] = {}
    prefix = gid_prefix(schema)
    for (each,) in conn.execute(SQL.PREPARED_OF_SCHEMA, (prefix,)).fetchall():
        try:
            owner_key, key = each[len(prefix) :].split("|")
            owner = int(owner_key)
        except ValueError:
            continue  # not one of ours
        if not conn.execute(SQL.TRY_OWNER_LOCK, (owner,)).fetchone()[0]:
            continue  # its session is alive: it will finish or abort itself
        try:
            decided = conn.execute(SQL.DECISION_EXISTS, (key,)).fetchone()[0]
            verb = "COMMIT PREPARED {}" if decided else "ROLLBACK PREPARED {}"
            conn.execute(pg_sql.SQL(verb).format(pg_sql.Literal(each)))
            outcome[each] = "committed" if decided else "rolled back"
        except pg_errors.UndefinedObject:
            pass  # another process resolved it first
        finally:
            conn.execute(SQL.OWNER_UNLOCK, (owner,))
    conn.execute(SQL.PRUNE_DECISIONS, (schema,))
    return outcome
