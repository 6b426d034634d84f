"""Undo across the databases of a collection (atoll.collection.undo)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import transaction
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection import undo_log
from atoll.errors import UndoError
from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage
from atoll.storage.sqlite import SQLiteStorage

NAMES = ("a", "b", "c")


def _storage(kind: str, tmp_path: Path, name: str, test: str, keep_history: bool = True):
    if kind == "memory":
        return MemoryStorage(name) if keep_history else MinimalMemoryStorage(name)
    if kind == "sqlite":
        return SQLiteStorage(tmp_path / f"{name}.db", keep_history=keep_history)
    import postgres_support

    return postgres_support.make_storage(f"{test}_{name}", keep_history=keep_history)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    dbs: dict = {}
    for name in NAMES:
        atoll.DB(_storage(request.param, tmp_path, name, request.node.name), database_name=name, databases=dbs)
    yield dbs
    transaction.abort()
    for db in dbs.values():
        db.close()


def set_everywhere(databases: dict, note: str, **values) -> None:
    """One transaction that sets ``values`` in the root of every database."""
    conn = databases["a"].open()
    try:
        for name in NAMES:
            conn.get_connection(name).root().update(values)
        transaction.get().note(note)
        transaction.commit()
    finally:
        conn.close()


def roots(databases: dict) -> dict:
    conn = databases["a"].open()
    try:
        return {name: dict(conn.get_connection(name).root()) for name in NAMES}
    finally:
        transaction.abort()
        conn.close()


def log_entry(db, description: str) -> dict:
    return next(e for e in db.undoLog(0, 100) if e["description"] == description)


def test_undo_a_transaction_of_three_databases(databases):
    set_everywhere(databases, "first", x=1)
    set_everywhere(databases, "second", x=2)
    with databases["b"].transaction("b only") as conn:
        conn.root()["x"]  # b's root stays as "second" left it
        conn.add(PersistentMapping(y=1))
    entry = log_entry(databases["c"], "second")
    assert entry["databases"] == NAMES
    assert log_entry(databases["b"], "b only")["databases"] == ("b",)
    databases["c"].undo(entry["id"])  # an id from any member's log
    transaction.get().note("undo second")
    transaction.commit()
    assert roots(databases) == {"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1}}
    # The undo is itself one transaction of the three, and can be undone as one.
    undone = log_entry(databases["a"], "undo second")
    assert undone["databases"] == NAMES
    databases["b"].undo(undone["id"])
    transaction.commit()
    assert roots(databases) == {"a": {"x": 2}, "b": {"x": 2}, "c": {"x": 2}}


def test_the_collection_log_shows_each_transaction_once(databases):
    set_everywhere(databases, "everywhere", x=1)
    with databases["b"].transaction("b only") as conn:
        conn.add(PersistentMapping(y=1))
    log = undo_log(databases, 0, 3)
    assert [(e["description"], e["databases"]) for e in log[:2]] == [("b only", ("b",)), ("everywhere", NAMES)]
    everywhere = [e for e in undo_log(databases, 0, 100) if e["description"] == "everywhere"]
    assert len(everywhere) == 1
    assert [e["description"] for e in undo_log(databases, 1, 2)] == ["everywhere"]
    assert [e["description"] for e in undo_log(databases, 0, 5, lambda e: e["database"] == "b")][:1] == ["b only"]
    databases["a"].undo(everywhere[0]["id"])
    transaction.commit()
    assert roots(databases) == {"a": {}, "b": {}, "c": {}}


def test_a_refusal_in_one_database_undoes_nothing(databases):
    conn = databases["a"].open()
    for name in NAMES:
        conn.get_connection(name).root()["box"] = PersistentMapping(v=1)
    transaction.commit()
    for name in NAMES:
        conn.get_connection(name).root()["box"]["v"] = 2
    transaction.get().note("second")
    transaction.commit()
    conn.get_connection("b").root()["box"]["v"] = 3  # a later change in b only
    transaction.commit()
    conn.close()
    databases["a"].undo(log_entry(databases["a"], "second")["id"])
    with pytest.raises(UndoError) as caught:
        transaction.commit()
    assert "'b'" in str(caught.value)
    transaction.abort()
    values = {name: root["box"]["v"] for name, root in roots(databases).items()}
    assert values == {"a": 2, "b": 3, "c": 2}


def test_a_history_free_member_stops_the_undo_before_it_starts(tmp_path):
    dbs: dict = {}
    atoll.DB(MemoryStorage("a"), database_name="a", databases=dbs)
    atoll.DB(MinimalMemoryStorage("b"), database_name="b", databases=dbs)
    conn = dbs["a"].open()
    conn.root()["x"] = 1
    conn.get_connection("b").root()["x"] = 1
    transaction.get().note("both")
    transaction.commit()
    conn.close()
    with pytest.raises(UndoError, match="'b' keeps no history"):
        dbs["a"].undo(log_entry(dbs["a"], "both")["id"])
    for db in dbs.values():
        db.close()
