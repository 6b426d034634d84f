"""Savepoints write changes to a temporary store and let the cache shrink (issue 17)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import transaction
from BTrees.IOBTree import IOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import InvalidObjectReference
from atoll.savepoint import NEW, SavepointStore
from atoll.storage import MemoryStorage, SQLiteStorage
from helpers import Item


@pytest.fixture(params=["memory", "sqlite"])
def db(request, tmp_path):
    storage = MemoryStorage() if request.param == "memory" else SQLiteStorage(str(tmp_path / "sp.db"))
    database = atoll.DB(storage, database_name="main", cache_size=50)
    yield database
    database.close()


def reader_values(db, key="tree"):
    with db.transaction() as conn:
        return {k: v.value for k, v in conn.root()[key].items()}


def non_ghosts(conn):
    return conn._cache.cache_non_ghost_count


def test_savepoint_lets_the_cache_ghost_the_objects_it_saved(db):
    conn = db.open()
    conn.root()["tree"] = tree = IOBTree()
    items = [Item(i) for i in range(2000)]
    for i, item in enumerate(items):
        tree[i] = item
    transaction.savepoint()
    assert non_ghosts(conn) <= 60  # the cache's target (50) and a few it cannot ghost
    assert sum(item._p_changed is None for item in items) >= 1950
    transaction.commit()
    assert reader_values(db) == {i: i for i in range(2000)}
    conn.close()


def test_object_ghosted_after_a_savepoint_reloads_its_saved_state(db):
    conn = db.open()
    conn.root()["tree"] = tree = IOBTree()
    for i in range(300):
        tree[i] = Item(i)
    transaction.commit()
    for i in range(300):
        tree[i].value = -i
    first = tree[0]
    transaction.savepoint()
    conn.cacheMinimize()
    assert first._p_changed is None  # a ghost: its change lives only in the savepoint store
    assert first.value == 0 and tree[299].value == -299
    tree[5].value = "again"  # changed after the savepoint: written at commit
    transaction.commit()
    expected = {i: -i for i in range(300)}
    expected[5] = "again"
    assert reader_values(db) == expected
    conn.close()


def test_rollback_to_a_savepoint_restores_its_state_after_later_savepoints(db):
    conn = db.open()
    conn.root()["tree"] = tree = IOBTree()
    tree[0] = Item("committed")
    transaction.commit()
    tree[0].value = "at first savepoint"
    tree[1] = early = Item("new before first")
    first = transaction.savepoint()
    tree[0].value = "at second savepoint"
    tree[2] = late = Item("new before second")
    transaction.savepoint()
    tree[3] = unsaved = Item("never saved")
    conn.cacheMinimize()
    first.rollback()
    assert sorted(tree) == [0, 1]
    assert tree[0].value == "at first savepoint" and early.value == "new before first"
    assert late._p_jar is None and late._p_oid is None
    assert unsaved._p_jar is None and unsaved._p_oid is None
    first.rollback()  # a savepoint can be rolled back to again
    tree[4] = Item("after rollback")
    transaction.commit()
    assert reader_values(db) == {0: "at first savepoint", 1: "new before first", 4: "after rollback"}
    conn.close()


def test_abort_after_savepoints_disowns_new_objects_and_restores_stored_state(db):
    conn = db.open()
    conn.root()["tree"] = tree = IOBTree()
    tree[0] = kept = Item("committed")
    transaction.commit()
    kept.value = "changed"
    tree[1] = new = Item("new")
    transaction.savepoint()
    conn.cacheMinimize()
    transaction.abort()
    assert new._p_jar is None and new._p_oid is None
    assert kept.value == "committed" and list(tree) == [0]
    assert conn._saved is None  # the temporary store is gone
    conn.close()


def test_connection_with_saved_changes_cannot_be_closed_until_commit_or_abort(db):
    conn = db.open()
    conn.root()["x"] = Item(1)
    transaction.savepoint()
    with pytest.raises(atoll.errors.ConnectionStateError):
        conn.close()
    transaction.abort()
    conn.close()


def test_new_object_saved_implicitly_in_one_database_cannot_be_claimed_by_another():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    conn = first.open()
    shared = Item("shared")
    conn.root()["x"] = PersistentMapping(item=shared)
    transaction.savepoint()
    assert conn._saved.flags(shared._p_oid) == NEW
    conn.get_connection("second").root()["y"] = shared
    with pytest.raises(InvalidObjectReference, match="reachable from multiple databases"):
        transaction.commit()
    transaction.abort()
    conn.close()
    for database in databases.values():
        database.close()


def test_savepoints_keep_a_long_transactions_memory_small():
    """A small version of bench/savepoint_memory.py: traced memory after building
    20,000 objects, with a savepoint every 1,000, against none."""

    def build(savepoints: bool) -> int:
        db = atoll.DB(MemoryStorage(), cache_size=100)
        conn = db.open()
        conn.root()["tree"] = tree = IOBTree()
        gc.collect()
        tracemalloc.start()
        for i in range(20_000):
            tree[i] = Item("x" * 50)
            if savepoints and i % 1000 == 999:
                transaction.savepoint()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        transaction.abort()
        conn.close()
        db.close()
        return held

    without, with_savepoints = build(False), build(True)
    assert with_savepoints < without / 2, (with_savepoints, without)


def test_savepoint_store_rollback_follows_each_oid_back_to_its_older_record():
    store = SavepointStore()
    a, b, c = b"\0" * 7 + b"\1", b"\0" * 7 + b"\2", b"\0" * 7 + b"\3"
    store.write([(a, b"\0" * 8, NEW, b"a1"), (b, b"s" * 8, 0, b"b1")])
    position = store.position
    store.write([(a, b"\0" * 8, NEW, b"a2"), (c, b"\0" * 8, NEW, b"c1")])
    store.write([(a, b"\0" * 8, NEW, b"a3")])
    assert store.load(a) == (b"a3", b"\0" * 8)
    changed = sorted(store.rollback(position))
    assert changed == [(a, True, True), (c, False, True)]
    assert store.load(a) == (b"a1", b"\0" * 8) and store.load(b) == (b"b1", b"s" * 8)
    assert c not in store and len(store) == 2
    assert [dict(batch) for batch in store.records(exclude={b})] == [{a: (b"\0" * 8, b"a1")}]
    store.close()
