"""Connection: loading, saving, abort, savepoints, MVCC, conflicts, the jar protocol.

The ``db`` fixture runs every test on each kind of storage (memory, minimal memory,
SQLite, PostgreSQL): the guide says a connection behaves the same on all of them.
"""

from __future__ import annotations

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import (
    ConflictError,
    ConnectionStateError,
    POSKeyError,
    ReadConflictError,
    ReadOnlyHistoryError,
)
from atoll.ids import ROOT_OID, p64
from atoll.storage import MemoryStorage, MinimalMemoryStorage
from helpers import Counter, Item, WithArgs


def _storage(kind: str, request: pytest.FixtureRequest, tmp_path):
    if kind == "memory":
        return MemoryStorage()
    if kind == "minimal":
        return MinimalMemoryStorage()
    if kind == "sqlite":
        from atoll.storage import SQLiteStorage

        return SQLiteStorage(tmp_path / "connection.db")
    import postgres_support

    return postgres_support.make_storage(request.node.name)


@pytest.fixture(params=["memory", "minimal", "sqlite", "postgresql"])
def db(request, tmp_path):
    database = atoll.DB(_storage(request.param, request, tmp_path), database_name="main")
    yield database
    database.close()


def other(db):
    """A second connection with its own transaction manager."""
    return db.open(transaction.TransactionManager())


def test_root_is_a_persistent_mapping_created_on_first_open(db):
    conn = db.open()
    assert isinstance(conn.root(), PersistentMapping)
    assert conn.root()._p_oid == ROOT_OID
    assert len(db) == 1
    conn.close()


def test_root_attribute_access(db):
    conn = db.open()
    conn.root.answer = 42
    assert conn.root()["answer"] == 42
    assert conn.root.answer == 42
    del conn.root.answer
    with pytest.raises(AttributeError):
        conn.root.missing
    assert "answer" not in conn.root()
    transaction.abort()
    conn.close()


def test_commit_saves_objects_reachable_from_root(db):
    conn = db.open()
    conn.root()["item"] = Item(Item("nested"))
    transaction.commit()
    reader = other(db)
    item = reader.root()["item"]
    assert item.value.value == "nested"
    assert item._p_jar is reader
    assert len(db) == 3


def test_loaded_objects_are_ghosts_until_touched(db):
    conn = db.open()
    conn.root()["item"] = Item("x")
    transaction.commit()
    reader = other(db)
    item = reader.root()["item"]
    assert item._p_changed is None
    assert item.value == "x"
    assert item._p_changed is False


def test_abort_restores_state_and_forgets_new_objects(db):
    conn = db.open()
    conn.root()["item"] = Item(1)
    transaction.commit()
    item = conn.root()["item"]
    item.value = 2
    fresh = Item("new")
    conn.root()["fresh"] = fresh
    transaction.abort()
    assert item.value == 1
    assert "fresh" not in conn.root()
    assert fresh._p_jar is None and fresh._p_oid is None


def test_get_by_oid_and_missing_oid_names_database(db):
    conn = db.open()
    conn.root()["item"] = item = Item(1)
    transaction.commit()
    assert conn.get(item._p_oid) is item
    with pytest.raises(POSKeyError) as info:
        other(db).get(p64(999))
    assert "0x3e7" in str(info.value) and "'main'" in str(info.value)


def test_add_gives_an_oid_at_once(db):
    conn = db.open()
    item = Item(5)
    conn.add(item)
    assert item._p_jar is conn and item._p_oid is not None
    assert conn.get(item._p_oid) is item
    conn.root()["item"] = item
    transaction.commit()
    assert other(db).get(item._p_oid).value == 5


def test_add_refuses_non_persistent(db):
    conn = db.open()
    with pytest.raises(TypeError):
        conn.add(object())


def test_snapshot_isolation_until_transaction_boundary(db):
    writer = db.open()
    writer.root()["item"] = Item(1)
    transaction.commit()
    reader = other(db)
    assert reader.root()["item"].value == 1
    writer.root()["item"].value = 2
    transaction.commit()
    # Same transaction: still the old snapshot, even after ghosting.
    reader.cacheMinimize()
    assert reader.root()["item"].value == 1
    reader.transaction_manager.begin()
    assert reader.root()["item"].value == 2


def test_write_conflict_carries_oid_serials_class_and_database(db):
    a, b = db.open(), other(db)
    a.root()["item"] = Item(0)
    transaction.commit()
    b.transaction_manager.begin()
    b.root()["item"].value = "b"
    a.root()["item"].value = "a"
    transaction.commit()
    with pytest.raises(ConflictError) as info:
        b.transaction_manager.commit()
    error = info.value
    assert error.oid == a.root()["item"]._p_oid
    assert error.class_name == "helpers.Item"
    assert error.database_name == "main"
    committed, read = error.serials
    assert committed == a.root()["item"]._p_serial and read < committed
    b.transaction_manager.abort()
    assert b.root()["item"].value == "a"


def test_conflict_resolution_merges(db):
    a, b = db.open(), other(db)
    a.root()["counter"] = Counter()
    transaction.commit()
    b.transaction_manager.begin()
    b.root()["counter"].value += 5
    a.root()["counter"].value += 3
    transaction.commit()
    b.transaction_manager.commit()
    transaction.begin()
    assert a.root()["counter"].value == 8
    # b's copy was replaced by a merged state it never saw: it reloads.
    b.transaction_manager.begin()
    assert b.root()["counter"].value == 8


def test_btree_buckets_resolve_concurrent_inserts(db):
    a, b = db.open(), other(db)
    a.root()["tree"] = OOBTree()
    transaction.commit()
    b.transaction_manager.begin()
    a.root()["tree"]["x"] = 1
    b.root()["tree"]["y"] = 2
    transaction.commit()
    b.transaction_manager.commit()
    transaction.begin()
    assert dict(a.root()["tree"].items()) == {"x": 1, "y": 2}


def test_read_current_detects_a_change_to_an_object_only_read(db):
    a, b = db.open(), other(db)
    a.root()["rule"] = Item(1)
    a.root()["out"] = Item(None)
    transaction.commit()
    b.transaction_manager.begin()
    rule = b.root()["rule"]
    b.readCurrent(rule)
    b.root()["out"].value = rule.value
    a.root()["rule"].value = 2
    transaction.commit()
    with pytest.raises(ReadConflictError):
        b.transaction_manager.commit()
    b.transaction_manager.abort()


def test_attempts_loop_retries_conflicts():
    db = atoll.DB(None)
    a, b = db.open(), other(db)
    a.root()["item"] = Item(0)
    transaction.commit()
    tries = 0
    for attempt in b.transaction_manager.attempts():
        with attempt:
            tries += 1
            b.root()["item"].value += 1
            if tries == 1:
                a.root()["item"].value += 10
                transaction.commit()
    transaction.begin()
    assert a.root()["item"].value == 11 and tries == 2


def test_savepoint_rollback(db):
    conn = db.open()
    conn.root()["item"] = Item(1)
    transaction.commit()
    item = conn.root()["item"]
    item.value = 2
    savepoint = transaction.savepoint()
    item.value = 3
    conn.root()["later"] = Item("later")
    savepoint.rollback()
    assert item.value == 2 and "later" not in conn.root()
    item.value = 4
    savepoint.rollback()  # a savepoint can be rolled back to again
    assert item.value == 2
    transaction.commit()
    assert other(db).root()["item"].value == 2


def test_savepoint_taken_before_joining_restores_committed_state(db):
    conn = db.open()
    conn.root()["item"] = Item(1)
    transaction.commit()
    savepoint = transaction.savepoint()
    conn.root()["item"].value = 9
    savepoint.rollback()
    assert conn.root()["item"].value == 1


def test_cache_minimize_ghosts_unmodified_and_keeps_changes(db):
    conn = db.open()
    conn.root()["a"] = Item(1)
    conn.root()["b"] = Item(2)
    transaction.commit()
    a, b = conn.root()["a"], conn.root()["b"]
    a.value = 10
    conn.cacheMinimize()
    assert b._p_changed is None
    assert a._p_changed is True and a.value == 10
    transaction.commit()
    assert other(db).root()["a"].value == 10


def test_cache_gc_respects_cache_size():
    db = atoll.DB(None, cache_size=10)
    conn = db.open()
    for i in range(100):
        conn.root()[i] = Item(i)
    transaction.commit()
    conn.cacheGC()
    assert len(conn._cache) <= 20
    assert sum(conn.root()[i].value for i in range(100)) == 4950


def test_prefetch_loads_records_in_one_batch(db):
    conn = db.open()
    for i in range(20):
        conn.root()[i] = Item(i)
    transaction.commit()
    reader = other(db)
    items = [reader.root()[i] for i in range(20)]
    batches = []
    original_many = reader._view.load_many

    def counting_many(oids):
        batches.append(list(oids))
        return original_many(oids)

    reader._view.load_many = counting_many
    reader.prefetch(items)
    assert len(batches) == 1 and len(batches[0]) == 20
    singles = []
    original_load = reader._view.load
    reader._view.load = lambda oid: singles.append(oid) or original_load(oid)
    assert [item.value for item in items] == list(range(20))
    assert singles == []  # every state came from the prefetched batch


def test_new_object_with_getnewargs_round_trips(db):
    conn = db.open()
    conn.root()["k"] = WithArgs("key1")
    transaction.commit()
    reader = other(db)
    assert reader.root()["k"].key == "key1"


def test_historical_connection_reads_the_past_and_refuses_writes(db):
    conn = db.open()
    conn.root()["item"] = Item("old")
    transaction.commit()
    then = db.lastTransaction()
    conn.root()["item"].value = "new"
    transaction.commit()
    past = db.open(at=then)
    assert past.isReadOnly()
    assert past.root()["item"].value == "old"
    with pytest.raises(ReadOnlyHistoryError):
        past.root()["item"].value = "changed"
    past.close()


def test_closed_connection_refuses_use(db):
    conn = db.open()
    conn.close()
    with pytest.raises(ConnectionStateError):
        conn.root()


def test_closing_with_pending_changes_is_refused(db):
    conn = db.open()
    conn.root()["x"] = 1
    with pytest.raises(ConnectionStateError):
        conn.close()
    transaction.abort()
    conn.close()


def test_transaction_metadata_reaches_history(db):
    conn = db.open()
    txn = transaction.get()
    txn.note("first note")
    txn.setUser("alice")
    conn.root()["x"] = 1
    transaction.commit()
    entry = db.history(ROOT_OID, size=5)[0]
    assert entry["description"] == "first note"
    assert "alice" in entry["user_name"]
    assert entry["tid"] == db.lastTransaction()


def test_history_returns_at_most_size_newest_first():
    db = atoll.DB(MemoryStorage())
    conn = db.open()
    for i in range(4):
        conn.root()["x"] = i
        transaction.commit()
    history = db.history(ROOT_OID, size=3)
    assert len(history) == 3
    assert history[0]["tid"] > history[1]["tid"] > history[2]["tid"]


def test_a_view_that_cannot_tell_what_changed_makes_the_cache_forget_everything(db):
    conn = db.open()
    conn.root()["item"] = Item(1)
    transaction.commit()
    item = conn.root()["item"]
    assert item._p_changed is False
    conn._view.poll = lambda: None
    transaction.begin()
    assert item._p_changed is None
    assert item.value == 1


class _CountingView:
    """A storage view that counts round trips: single loads and batches."""

    def __init__(self, view, counts):
        self._view, self._counts = view, counts

    def load(self, oid):
        self._counts["loads"] += 1
        return self._view.load(oid)

    def load_many(self, oids):
        oids = list(oids)
        self._counts["batches"] += 1
        self._counts["records"] += len(oids)
        # A backend's load_many may call its own load: count only what the connection asks.
        return self._view.load_many(oids)

    def __getattr__(self, name):
        return getattr(self._view, name)


class _CountingStorage:
    """Wraps a storage so that every view it opens counts its round trips."""

    def __init__(self, storage):
        self._storage = storage
        self.counts = {"loads": 0, "batches": 0, "records": 0}

    def open_view(self, before=None):
        return _CountingView(self._storage.open_view(before), self.counts)

    def reset(self):
        self.counts.update(loads=0, batches=0, records=0)

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def __len__(self):
        return len(self._storage)


@pytest.fixture
def counted(db):
    """A second DB on the same storage whose views count round trips."""
    storage = _CountingStorage(db.storage)
    counted_db = atoll.DB(storage, database_name="counted")
    yield counted_db, storage


def test_read_ahead_reads_siblings_in_few_round_trips(db, counted):
    conn = db.open()
    conn.root()["items"] = PersistentMapping({i: Item(i) for i in range(300)})
    transaction.commit()
    counted_db, storage = counted
    reader = counted_db.open(transaction.TransactionManager())
    items = reader.root()["items"]
    assert len(items) == 300
    storage.reset()
    assert sum(item.value for item in items.values()) == sum(range(300))
    # 300 ghosts loaded in growing batches: a handful of round trips, none wasted.
    assert storage.counts["loads"] == 0
    assert storage.counts["batches"] <= 8
    assert storage.counts["records"] == 300
    reader.close()


def test_read_ahead_learns_from_scans_and_from_waste(db, counted):
    conn = db.open()
    for name in "abcd":
        conn.root()[name] = PersistentMapping({i: Item(i) for i in range(40)})
    transaction.commit()
    counted_db, storage = counted
    reader = counted_db.open(transaction.TransactionManager())
    root = reader.root()
    root["a"], root["b"], root["c"], root["d"]  # the mappings themselves
    storage.reset()
    assert sum(item.value for item in root["a"].values()) == sum(range(40))
    first_scan = storage.counts["batches"]
    storage.reset()
    assert sum(item.value for item in root["b"].values()) == sum(range(40))
    assert storage.counts["batches"] < first_scan  # the scan of a taught it to start bigger
    storage.reset()
    assert root["c"][0].value == 0  # one object of c: the rest of its batch is loaded in vain
    wasted = storage.counts["records"]
    assert wasted > 1
    reader.transaction_manager.begin()
    storage.reset()
    assert root["d"][0].value == 0
    assert 1 <= storage.counts["records"] < wasted  # the waste made the next first batch smaller
    reader.close()


def test_a_large_record_does_not_leave_its_pickler_memo_to_later_records(db):
    conn = db.open()
    conn.root()["big"] = PersistentMapping({i: Item(i) for i in range(20000)})
    writer = conn._writer
    before = writer._pickler
    transaction.commit()
    assert writer._pickler is not before  # replaced after the large mapping record
    small = writer._pickler
    conn.root()["big"][0].value = "changed"
    transaction.commit()
    assert writer._pickler is small  # small records keep reusing it


def test_btree_with_persistent_values_merges_concurrent_inserts(db):
    # Buckets compare values three-way while merging: references must order.
    a = db.open()
    a.root()["tree"] = OOBTree({"a": Item(1), "b": Item(2)})
    transaction.commit()
    b = other(db)
    b.root()["tree"]["c"] = Item(3)
    a.root()["tree"]["d"] = Item(4)
    b.transaction_manager.commit()
    transaction.commit()
    transaction.begin()
    assert {k: v.value for k, v in a.root()["tree"].items()} == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_sync_aborts_changes_and_moves_to_the_newest_snapshot(db):
    conn = db.open()
    conn.root()["x"] = Item(1)
    transaction.commit()
    writer = other(db)
    writer.root()["x"].value = 2
    writer.transaction_manager.commit()
    assert conn.root()["x"].value == 1  # no transaction boundary yet: old snapshot
    conn.root()["y"] = 5  # an uncommitted change, which sync aborts
    conn.sync()
    assert conn.root()["x"].value == 2
    assert "y" not in conn.root()
