"""Behaviours ZODB's own tests expect of a connection and a database (issue 17).

Each test is named after the behaviour it checks; ZODB is not needed to run them.
"""

from __future__ import annotations

import datetime
import logging
import threading

import pytest
import transaction
from BTrees.OOBTree import OOBTree, OOTreeSet
from persistent.mapping import PersistentMapping
from persistent.wref import PersistentWeakKeyDictionary, WeakRef

import atoll
from atoll.errors import ConflictError, ConnectionStateError, POSKeyError, ReadOnlyHistoryError
from atoll.ids import next_tid, oid_repr, p64, tid_repr, u64
from atoll.serialize import PersistentReference, references
from atoll.storage import MemoryStorage
from helpers import Item, Key


@pytest.fixture
def db():
    database = atoll.DB(MemoryStorage(), database_name="main")
    yield database
    database.close()


# -- historical connections -------------------------------------------------------


def test_refused_change_through_historical_connection_does_not_survive_abort(db):
    conn = db.open()
    conn.root()["first"] = PersistentMapping(count=0)
    transaction.commit()
    manager = transaction.TransactionManager()
    past = db.open(manager, at=db.lastTransaction())
    with pytest.raises(ReadOnlyHistoryError):
        past.root()["first"]["count"] += 1
    manager.abort()
    assert past.root()["first"]["count"] == 0
    past.close()
    conn.close()


def test_refused_historical_change_is_undone_by_commit_or_close_and_spoils_no_commit(db):
    conn = db.open()
    conn.root()["first"] = PersistentMapping(count=0)
    transaction.commit()
    past = db.open(at=db.lastTransaction())  # the thread's manager, shared with conn
    with pytest.raises(ReadOnlyHistoryError):
        past.root()["first"]["count"] = 5
    conn.root()["other"] = 1
    transaction.commit()  # the refusal already told the user; other work commits
    assert past.root()["first"]["count"] == 0
    with pytest.raises(ReadOnlyHistoryError):
        past.root()["first"]["count"] = 6
    past.close()
    again = db.open(at=db.lastTransaction())
    assert again.root()["first"]["count"] == 0
    again.close()
    conn.close()


def test_historical_connection_in_the_future_raises_value_error(db):
    conn = db.open()
    conn.root()["x"] = 1
    transaction.commit()
    tomorrow = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    with pytest.raises(ValueError, match="future"):
        db.open(at=tomorrow)
    with pytest.raises(ValueError, match="future"):
        db.open(before=tomorrow)
    with pytest.raises(ValueError, match="future"):
        db.open(before=p64(u64(next_tid(db.lastTransaction())) + 1))
    # The newest transaction itself, and the moment just after it, are allowed.
    for past in (db.open(at=db.lastTransaction()), db.open(before=next_tid(db.lastTransaction()))):
        assert past.root()["x"] == 1
        past.close()
    conn.close()


def test_isreadonly_on_closed_connection_raises_connection_state_error(db):
    conn = db.open()
    assert conn.isReadOnly() is False
    conn.close()
    with pytest.raises(ConnectionStateError):
        conn.isReadOnly()


# -- closing ------------------------------------------------------------------------


def test_db_close_with_connections_leaked_by_other_threads_closes_every_database():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    second = atoll.DB(MemoryStorage(), database_name="second", databases=databases)

    def leak() -> None:  # opened with the thread-local default manager, never closed
        conn = first.open()
        conn.get_connection("second").root()["x"] = 1
        transaction.commit()

    thread = threading.Thread(target=leak)
    thread.start()
    thread.join()
    for db in databases.values():
        db.close()  # from the main thread, whose manager never saw those connections
    for db in (first, second):
        assert db._closed and db.storage._closed


def test_closing_a_connect_connection_closes_every_database_even_when_one_fails(tmp_path, caplog):
    conf = tmp_path / "two.conf"
    conf.write_text(
        "<zodb a>\n  <mappingstorage/>\n</zodb>\n<zodb b>\n  <mappingstorage/>\n</zodb>\n"
    )
    conn = atoll.connect(conf)
    databases = conn.db().databases

    def fail() -> None:
        raise RuntimeError("storage close failed")

    databases["a"].storage.close, real_close = fail, databases["a"].storage.close
    with pytest.raises(RuntimeError):
        conn.close()
    assert databases["b"]._closed
    real_close()


# -- onCloseCallback ----------------------------------------------------------------


def test_on_close_callback_runs_once_at_close_and_a_failing_one_is_logged(db, caplog):
    conn = db.open()
    calls = []
    conn.onCloseCallback(lambda: calls.append("first"))
    conn.onCloseCallback(lambda: 1 / 0)
    conn.onCloseCallback(lambda: calls.append("last"))
    with caplog.at_level(logging.ERROR, logger="atoll.connection"):
        conn.close()
    assert calls == ["first", "last"]
    assert "close callback" in caplog.text
    again = db.open()
    assert again is conn  # from the pool: its callbacks ran once and are gone
    again.close()
    assert calls == ["first", "last"]


# -- pool and cache settings ------------------------------------------------------------


def test_pool_size_get_and_set_trims_idle_connections(db):
    assert db.getPoolSize() == 7
    managers = [transaction.TransactionManager() for _ in range(3)]
    conns = [db.open(m) for m in managers]
    for conn in conns:
        conn.close()
    assert len(db._pool.idle) == 3
    db.setPoolSize(1)
    assert db.getPoolSize() == 1
    assert len(db._pool.idle) == 1


def test_cache_size_set_reaches_open_and_idle_connections_caches(db):
    open_conn = db.open(transaction.TransactionManager())
    idle = db.open(transaction.TransactionManager())
    idle.close()
    assert db.getCacheSize() == 400
    db.setCacheSize(17)
    assert db.getCacheSize() == 17
    assert open_conn._cache.cache_size == 17 and idle._cache.cache_size == 17
    assert db.open(transaction.TransactionManager())._cache.cache_size == 17
    db.setCacheSizeBytes(1 << 20)
    assert db.getCacheSizeBytes() == 1 << 20 and open_conn._cache.cache_size_bytes == 1 << 20


def test_historical_cache_size_set_reaches_historical_connections_only(db):
    current = db.open()
    past = db.open(transaction.TransactionManager(), at=db.lastTransaction())
    assert db.getHistoricalCacheSize() == 1000
    db.setHistoricalCacheSize(33)
    assert db.getHistoricalCacheSize() == 33
    assert past._cache.cache_size == 33
    assert current._cache.cache_size == 400
    db.setHistoricalCacheSizeBytes(4096)
    assert db.getHistoricalCacheSizeBytes() == 4096 and past._cache.cache_size_bytes == 4096
    past.close()
    current.close()


def test_historical_pool_size_and_timeout_get_and_set(db):
    tid = db.lastTransaction()
    conns = [db.open(transaction.TransactionManager(), at=tid) for _ in range(3)]
    for conn in conns:
        conn.close()
    assert db.getHistoricalPoolSize() == 3
    db.setHistoricalPoolSize(1)
    assert db.getHistoricalPoolSize() == 1
    (pool,) = db._historical.values()
    assert len(pool.idle) == 1
    assert db.getHistoricalTimeout() == 300
    db.setHistoricalTimeout(0)
    assert db.getHistoricalTimeout() == 0
    assert db._historical == {}  # the idle one was older than 0 seconds


# -- conflict resolution ---------------------------------------------------------------


def test_btree_set_with_persistent_keys_added_concurrently_is_a_conflict(db):
    conn = db.open()
    conn.root()["set"] = OOTreeSet()
    transaction.commit()
    first, second = (db.open(transaction.TransactionManager()) for _ in range(2))
    first.root()["set"].add(Key(1))
    second.root()["set"].add(Key(2))
    first.transaction_manager.commit()
    with pytest.raises(ConflictError) as raised:
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    assert "can't reliably compare" in str(raised.value)
    reader = db.open(transaction.TransactionManager())
    assert [key.value for key in reader.root()["set"]] == [1]
    for c in (first, second, reader, conn):
        c.close()


def test_btree_with_persistent_values_under_different_new_keys_still_merges(db):
    conn = db.open()
    conn.root()["tree"] = OOBTree()
    transaction.commit()
    first, second = (db.open(transaction.TransactionManager()) for _ in range(2))
    first.root()["tree"]["a"] = Item("a")
    second.root()["tree"]["b"] = Item("b")
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    reader = db.open(transaction.TransactionManager())
    assert {k: v.value for k, v in reader.root()["tree"].items()} == {"a": "a", "b": "b"}
    for c in (first, second, reader, conn):
        c.close()


def test_btree_value_replaced_by_another_persistent_object_is_a_conflict_as_in_zodb(db):
    # Merging needs to know whether the committed value is the one both started
    # from; two different references cannot be compared (ZODB refuses too).
    conn = db.open()
    conn.root()["tree"] = tree = OOBTree()
    tree["a"] = Item("A")
    transaction.commit()
    first, second = (db.open(transaction.TransactionManager()) for _ in range(2))
    first.root()["tree"]["a"] = Item("B")
    second.root()["tree"]["b"] = 2
    first.transaction_manager.commit()
    with pytest.raises(ConflictError, match="conflict resolution failed"):
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    for c in (first, second, conn):
        c.close()


def test_failed_resolution_message_starts_as_zodbs_and_gives_the_reason(db):
    conn = db.open()
    conn.root()["set"] = OOTreeSet()
    transaction.commit()
    oid = conn.root()["set"]._p_oid
    first, second = (db.open(transaction.TransactionManager()) for _ in range(2))
    first.root()["set"].add(Key(1))
    second.root()["set"].add(Key(2))
    read = second.root()["set"]._p_serial
    first.transaction_manager.commit()
    committed = first.root()["set"]._p_serial
    with pytest.raises(ConflictError) as raised:
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    message = str(raised.value)
    assert message.startswith(
        f"database conflict error (oid {oid_repr(oid)}, class BTrees.OOBTree.OOTreeSet, "
        f"serial this txn started with {tid_repr(read)}, "
        f"serial currently committed {tid_repr(committed)}) in database 'main': "
    ), message
    assert "conflict resolution failed: ValueError: can't reliably compare" in message
    assert raised.value.reason.startswith("conflict resolution failed")
    for c in (first, second, conn):
        c.close()


def test_plain_conflict_message_is_zodbs_without_a_reason(db):
    conn = db.open()
    conn.root()["item"] = Item(0)
    transaction.commit()
    first, second = (db.open(transaction.TransactionManager()) for _ in range(2))
    first.root()["item"].value = 1
    second.root()["item"].value = 2
    first.transaction_manager.commit()
    with pytest.raises(ConflictError) as raised:
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    assert str(raised.value).startswith("database conflict error (oid ")
    assert str(raised.value).endswith(") in database 'main'")
    assert raised.value.reason is None
    for c in (first, second, conn):
        c.close()


# -- PersistentReference, what _p_resolveConflict receives ---------------------------------


OID, OTHER = p64(5), p64(6)


@pytest.mark.parametrize(
    "ref,oid,database_name,klass,weak",
    [
        ((OID, Item), OID, None, Item, False),
        (OID, OID, None, None, False),
        (["m", ("other", OID, Item)], OID, "other", Item, False),
        (["n", ("other", OID)], OID, "other", None, False),
        (["w", (OID,)], OID, None, None, True),
        (["w", (OID, "other")], OID, "other", None, True),
    ],
    ids=["oid-class", "oid", "multi-database", "multi-database-no-class", "weak", "weak-multi-database"],
)
def test_persistent_reference_public_attributes(ref, oid, database_name, klass, weak):
    reference = PersistentReference(ref)
    assert (reference.oid, reference.database_name, reference.klass, reference.weak) == (
        oid, database_name, klass, weak,
    )


def test_persistent_references_to_one_object_compare_equal_weak_forms_included():
    assert PersistentReference(["w", (OID,)]) == PersistentReference(["w", (OID,)])
    assert PersistentReference(["w", (OID,)]) == PersistentReference((OID, Item))
    assert PersistentReference(["w", (OID, "other")]) == PersistentReference(["m", ("other", OID, Item)])
    assert not PersistentReference(OID) < PersistentReference((OID, None))
    assert hash(PersistentReference(["w", (OID,)])) == hash(PersistentReference(OID))


@pytest.mark.parametrize(
    "left,right",
    [
        ((OID, Item), (OTHER, Item)),
        (["w", (OID,)], ["w", (OTHER,)]),
        ((OID, Item), ["m", ("other", OID, Item)]),
    ],
    ids=["different-oids", "weak-different-oids", "different-databases"],
)
def test_comparing_different_persistent_references_raises_value_error(left, right):
    a, b = PersistentReference(left), PersistentReference(right)
    for compare in (lambda: a == b, lambda: a != b, lambda: a < b, lambda: a > b, lambda: a <= b, lambda: a >= b):
        with pytest.raises(ValueError, match="can't reliably compare"):
            compare()
    assert (a == "not a reference") is False


# -- weak references -----------------------------------------------------------------------


def stored(db, oid):
    view = db.storage.open_view()
    try:
        return view.load(oid)[0]
    finally:
        view.release()


def test_weak_reference_is_stored_and_loaded_within_a_database(db):
    conn = db.open()
    conn.root()["target"] = target = Item("target")
    conn.root()["ref"] = WeakRef(target)
    conn.root()["new_only_weakly"] = WeakRef(new := Item("new"))  # stored with it, as in ZODB
    transaction.commit()
    assert new._p_oid is not None
    reader = db.open(transaction.TransactionManager())
    ref = reader.root()["ref"]
    assert isinstance(ref, WeakRef)
    assert ref() is reader.root()["target"]
    assert reader.root()["new_only_weakly"]().value == "new"
    assert ref == WeakRef(reader.root()["target"])
    reader.close()
    conn.close()


def test_persistent_weak_key_dictionary_round_trips(db):
    conn = db.open()
    conn.root()["keys"] = [Item(1), Item(2)]
    conn.root()["weak"] = weak = PersistentWeakKeyDictionary()
    for key in conn.root()["keys"]:
        weak[key] = key.value * 10
    transaction.commit()
    reader = db.open(transaction.TransactionManager())
    loaded = reader.root()["weak"]
    assert [loaded[key] for key in reader.root()["keys"]] == [10, 20]
    reader.close()
    conn.close()


def test_weak_reference_across_databases_loads_the_other_databases_object():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    second = atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    conn = first.open()
    other = conn.get_connection("second")
    other.root()["target"] = target = Item("in second")
    transaction.commit()
    conn.root()["ref"] = WeakRef(target)
    transaction.commit()
    record = stored(first, conn.root()._p_oid)
    assert ("second", target._p_oid) not in references(record)  # weak: not a strong reference
    reader = first.open(transaction.TransactionManager())
    loaded = reader.root()["ref"]()
    assert loaded.value == "in second" and loaded._p_jar.db() is second
    assert loaded is reader.get_connection("second").root()["target"]
    reader.close()
    conn.close()
    for database in databases.values():
        database.close()


def test_pack_does_not_keep_an_object_referenced_only_weakly(db):
    conn = db.open()
    conn.root()["ref"] = WeakRef(target := Item("only weakly"))
    conn.root()["kept"] = kept = Item("strongly")
    conn.root()["kept_ref"] = WeakRef(kept)
    transaction.commit()
    oid = target._p_oid
    record = stored(db, conn.root()._p_oid)
    assert (None, oid) not in references(record)
    db.pack()
    with pytest.raises(POSKeyError):
        stored(db, oid)
    reader = db.open(transaction.TransactionManager())
    assert reader.root()["ref"]() is None  # dangling: the object is gone
    assert reader.root()["kept_ref"]().value == "strongly"
    reader.close()
    conn.close()
