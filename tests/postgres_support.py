"""Helpers for tests that need PostgreSQL: where the server is, and fresh storages.

Every :func:`make_storage` call gets its own schema, so tests never see each other's
data, even when several test runs share one server. A server that cannot be reached
skips the test with the reason (the DSN tried and the error), unless the environment
sets ``ATOLL_REQUIRE_POSTGRES=1`` (CI does): then the test fails, so that a broken CI
database cannot pass silently.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
import uuid

import pytest

__all__ = ["postgres_dsn", "make_storage", "require_postgres", "drop_schema", "admin_connection"]

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"

_lock = threading.Lock()
_created: list[tuple[object, str]] = []  # (storage, schema) made by make_storage, dropped at exit
_reachable: tuple[bool, str] | None = None  # cached result of the first connection attempt


def postgres_dsn() -> str:
    """The DSN of the test server: ``ATOLL_TEST_POSTGRES_DSN`` or the local default."""
    return os.environ.get("ATOLL_TEST_POSTGRES_DSN") or DEFAULT_DSN


def _shown_dsn(dsn: str) -> str:
    """The DSN for messages, its password (if any) masked."""
    return re.sub(r"(password=|://[^:/@]*:)[^ @]*", r"\1***", dsn)


def _required() -> bool:
    return os.environ.get("ATOLL_REQUIRE_POSTGRES", "") not in ("", "0")


def require_postgres() -> None:
    """Skip (or, under ``ATOLL_REQUIRE_POSTGRES=1``, fail) when the server is unusable.

    Unusable means unreachable, psycopg missing, or prepared transactions disabled
    (``max_prepared_transactions = 0``), which atoll's two-phase commit needs.
    """
    global _reachable
    with _lock:
        if _reachable is None:
            _reachable = _probe()
    ok, reason = _reachable
    if ok:
        return
    if _required():
        pytest.fail(f"{reason} (ATOLL_REQUIRE_POSTGRES=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def _probe() -> tuple[bool, str]:
    dsn = postgres_dsn()
    try:
        import psycopg
    except ImportError:
        return False, "psycopg is not installed (pip install 'atoll[postgresql]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            prepared = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
    except psycopg.Error as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return False, f"PostgreSQL unreachable at {_shown_dsn(dsn)!r}: {first_line}"
    if prepared == 0:
        return False, (
            f"PostgreSQL at {_shown_dsn(dsn)!r} has max_prepared_transactions = 0; run "
            "ALTER SYSTEM SET max_prepared_transactions = 10 and restart the server"
        )
    return True, ""


def admin_connection():
    """A new autocommit psycopg connection to the test server (caller closes it)."""
    import psycopg

    require_postgres()
    return psycopg.connect(postgres_dsn(), autocommit=True)


def make_storage(name: str, **kwargs):
    """A new :class:`~atoll.storage.postgresql.PostgreSQLStorage` in a fresh schema.

    The schema is named from ``name`` plus a random suffix and dropped when the test
    process exits. ``kwargs`` go to the storage (``keep_history=False``, ...).
    """
    require_postgres()
    from atoll.storage.postgresql import PostgreSQLStorage

    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:30] or "s"
    schema = f"atoll_test_{slug}_{uuid.uuid4().hex[:8]}"
    storage = PostgreSQLStorage(postgres_dsn(), schema=schema, **kwargs)
    with _lock:
        _created.append((storage, schema))
    return storage


def drop_schema(schema: str) -> None:
    """Drop a test schema and any prepared transaction left in it."""
    import psycopg

    try:
        with psycopg.connect(postgres_dsn(), autocommit=True, connect_timeout=3) as conn:
            from atoll.storage.postgresql import rollback_prepared

            rollback_prepared(conn, schema)
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error:
        pass  # best effort at exit: the server may be gone


@atexit.register
def _drop_created() -> None:
    with _lock:
        created, _created[:] = list(_created), []
    for storage, schema in created:
        storage.close()
    for schema in {schema for _, schema in created}:
        drop_schema(schema)
