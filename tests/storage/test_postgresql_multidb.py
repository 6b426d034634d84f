"""A multi-database collection whose databases live in PostgreSQL commits across them
atomically, with cross-database references, through the public API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from persistent.mapping import PersistentMapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import postgres_support  # noqa: E402
from postgres_support import make_storage, postgres_dsn  # noqa: E402

import atoll  # noqa: E402
from atoll.errors import ConflictError  # noqa: E402


def open_collection(schemas: dict[str, str]) -> dict[str, atoll.DB]:
    from atoll.storage.postgresql import PostgreSQLStorage

    databases: dict[str, atoll.DB] = {}
    for name, schema in schemas.items():
        atoll.DB(PostgreSQLStorage(postgres_dsn(), schema=schema), database_name=name, databases=databases)
    return databases


@pytest.fixture
def schemas():
    storages = {"main": make_storage("multidb_main"), "other": make_storage("multidb_other")}
    schemas = {name: storage.schema for name, storage in storages.items()}
    for storage in storages.values():
        storage.close()
    return schemas


def test_one_commit_spans_both_databases_with_a_cross_reference(schemas):
    databases = open_collection(schemas)
    tm = transaction.TransactionManager()
    conn = databases["main"].open(transaction_manager=tm)
    other = conn.get_connection("other")
    thing = PersistentMapping(value=1)
    other.add(thing)
    other.root()["thing"] = thing
    conn.root()["link"] = thing
    tm.commit()
    main_tid, other_tid = databases["main"].lastTransaction(), databases["other"].lastTransaction()
    conn.close()
    for db in databases.values():
        db.close()

    with postgres_support.admin_connection() as admin:
        keys = [
            admin.execute(f'SELECT txn_key FROM "{schema}".transactions ORDER BY tid DESC LIMIT 1').fetchone()[0]
            for schema in schemas.values()
        ]
    assert keys[0] == keys[1]  # one transaction id shared by both participants

    reopened = open_collection(schemas)
    try:
        conn = reopened["main"].open()
        link = conn.root()["link"]
        assert link["value"] == 1
        assert link._p_jar.db() is reopened["other"]
        assert link is conn.get_connection("other").root()["thing"]
        assert (reopened["main"].lastTransaction(), reopened["other"].lastTransaction()) == (main_tid, other_tid)
        conn.close()
    finally:
        for db in reopened.values():
            db.close()


def test_a_conflict_in_one_database_commits_nothing_in_the_other(schemas):
    databases = open_collection(schemas)
    try:
        first_tm, second_tm = transaction.TransactionManager(), transaction.TransactionManager()
        first = databases["main"].open(transaction_manager=first_tm)
        first.get_connection("other").root()["n"] = 0
        first_tm.commit()
        second = databases["main"].open(transaction_manager=second_tm)
        second.get_connection("other").root()["n"]  # read before the first changes it
        main_before = databases["main"].lastTransaction()

        first.get_connection("other").root()["n"] = 1
        first_tm.commit()
        second.root()["written"] = True
        second.get_connection("other").root()["n"] = 2
        with pytest.raises(ConflictError):
            second_tm.commit()
        second_tm.abort()
        assert databases["main"].lastTransaction() == main_before
        for name, schema in schemas.items():
            with postgres_support.admin_connection() as admin:
                rows = admin.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"atoll|{schema}|%",))
                assert rows.fetchall() == [], name
        first.close()
        second.close()
    finally:
        for db in databases.values():
            db.close()
