"""Cross-database references in a collection, with ZODB's semantics."""

from __future__ import annotations

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import ConnectionStateError, InvalidObjectReference
from atoll.serialize import references
from atoll.storage import MemoryStorage
from helpers import Item


@pytest.fixture
def collection():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    second = atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    yield first, second
    for db in databases.values():
        db.close()


def test_reference_across_databases_loads_into_the_group(collection):
    first, second = collection
    conn = first.open()
    other = conn.get_connection("second")
    target = Item("in second")
    other.root()["target"] = target
    transaction.commit()
    conn.root()["link"] = target
    transaction.commit()
    record = first.storage.open_view().load(conn.root()._p_oid)[0]
    assert ("second", target._p_oid) in references(record)

    reader = first.open(transaction.TransactionManager())
    linked = reader.root()["link"]
    assert linked.value == "in second"
    assert linked._p_jar.db() is second
    assert linked._p_jar is reader.get_connection("second")
    assert linked is reader.get_connection("second").root()["target"]


def test_one_commit_covers_both_databases(collection):
    first, second = collection
    conn = first.open()
    conn.root()["a"] = Item(1)
    conn.get_connection("second").root()["b"] = Item(2)
    transaction.commit()
    assert len(first) == 2 and len(second) == 2
    assert first.lastTransaction() and second.lastTransaction()


def test_new_object_reachable_from_two_databases_is_refused(collection):
    first, _ = collection
    conn = first.open()
    shared = Item("shared")
    conn.root()["x"] = shared
    conn.get_connection("second").root()["x"] = shared
    with pytest.raises(InvalidObjectReference, match="reachable from multiple databases"):
        transaction.commit()
    transaction.abort()


def test_add_disambiguates_a_new_shared_object(collection):
    first, second = collection
    conn = first.open()
    shared = Item("shared")
    conn.get_connection("second").add(shared)
    conn.root()["x"] = shared
    conn.get_connection("second").root()["x"] = shared
    transaction.commit()
    assert shared._p_jar.db() is second
    reader = first.open(transaction.TransactionManager())
    assert reader.root()["x"] is reader.get_connection("second").root()["x"]


def test_reference_to_a_database_outside_the_collection_is_refused(collection):
    first, _ = collection
    stranger = atoll.DB(MemoryStorage(), database_name="stranger")
    conn = first.open()
    outside = stranger.open(transaction.TransactionManager())
    outside.root()["obj"] = obj = Item(1)
    outside.transaction_manager.commit()
    conn.root()["bad"] = obj
    with pytest.raises(InvalidObjectReference, match="not in the collection"):
        transaction.commit()
    transaction.abort()
    stranger.close()


def test_reference_to_another_connection_of_the_same_database_is_refused(collection):
    first, _ = collection
    conn = first.open()
    conn.root()["obj"] = Item(1)
    transaction.commit()
    separate = first.open(transaction.TransactionManager())
    foreign_obj = separate.root()["obj"]
    conn.root()["copy"] = foreign_obj
    with pytest.raises(InvalidObjectReference, match="another connection"):
        transaction.commit()
    transaction.abort()


def test_xrefs_false_forbids_references_from_that_database():
    databases: dict = {}
    strict = atoll.DB(MemoryStorage(), database_name="strict", databases=databases, xrefs=False)
    atoll.DB(MemoryStorage(), database_name="open", databases=databases)
    conn = strict.open()
    target = Item(1)
    conn.get_connection("open").root()["t"] = target
    transaction.commit()
    conn.root()["t"] = target
    with pytest.raises(InvalidObjectReference, match="does not allow cross-database"):
        transaction.commit()
    transaction.abort()
    # References into the strict database from the permissive one are allowed.
    conn.root()["mine"] = mine = Item(2)
    transaction.commit()
    conn.get_connection("open").root()["into_strict"] = mine
    transaction.commit()


def test_btrees_as_values_and_across_databases(collection):
    first, second = collection
    conn = first.open()
    tree = OOBTree()
    for i in range(500):
        tree[f"k{i:04d}"] = Item(i)
    conn.get_connection("second").root()["tree"] = tree
    transaction.commit()
    conn.root()["tree"] = tree
    transaction.commit()
    reader = first.open(transaction.TransactionManager())
    loaded = reader.root()["tree"]
    assert loaded._p_jar.db() is second
    assert len(loaded) == 500 and loaded["k0499"].value == 499


def test_closing_the_first_connection_closes_the_group(collection):
    first, second = collection
    conn = first.open()
    other = conn.get_connection("second")
    conn.close()
    assert other.opened is None
    with pytest.raises(ConnectionStateError):
        other.root()
    # The group stays bound: its second connection is not handed out on its own,
    # and reopening the first reopens it too (ZODB's behaviour).
    alone = second.open(transaction.TransactionManager())
    assert alone is not other
    alone.close()
    again = first.open()
    assert again is conn
    assert again.connections is other.connections
    assert sorted(again.connections) == ["first", "second"]
    assert other.opened is not None and other.transaction_manager is again.transaction_manager
    assert again.get_connection("second") is other


def _cross_referenced_collection(kind, tmp_path):
    databases: dict = {}
    for name in ("first", "second"):
        storage = MemoryStorage() if kind == "memory" else str(tmp_path / f"{name}.db")
        atoll.DB(storage, database_name=name, databases=databases)
    conn = databases["first"].open()
    target = Item("in second")
    conn.get_connection("second").add(target)
    conn.root()["link"] = PersistentMapping(target=target)
    transaction.commit()
    return databases, conn


def _touch_in_a_later_transaction(conn, shape):
    """Ghost the cross-database object held by the first's cached parent, move on to
    a later transaction the way ``shape`` says, and return the connection to use."""
    parent = conn.root()["link"]
    target = parent["target"]
    target._p_deactivate()
    assert target._p_changed is None
    db = conn.db()
    if shape == "commit":
        conn.root()["n"] = 1
        transaction.commit()
    elif shape == "abort":
        transaction.abort()
    elif shape == "begin":
        transaction.begin()
    elif shape == "reopen":
        transaction.commit()
        conn.close()
        conn = db.open()
    elif shape == "reopen-after-other-opened":
        conn.close()
        # Someone else opens the second database meanwhile: it must get a connection
        # of its own, not the one bound to the idle group.
        stranger = target._p_jar.db().open(transaction.TransactionManager())
        assert stranger is not target._p_jar
        stranger.close()
        conn = db.open()
    return conn, parent, target


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("shape", ["commit", "abort", "begin", "reopen", "reopen-after-other-opened"])
def test_a_cross_database_ghost_loads_in_a_later_transaction(kind, shape, tmp_path):
    databases, conn = _cross_referenced_collection(kind, tmp_path)
    try:
        conn, parent, target = _touch_in_a_later_transaction(conn, shape)
        assert conn.root()["link"] is parent  # the first's cached parent, reused
        assert parent["target"].value == "in second"  # loads: no ConnectionStateError
        assert target._p_jar is conn.get_connection("second")
        assert target._p_jar.opened is not None
        target.value = "changed"
        transaction.commit()
        reader = databases["first"].open(transaction.TransactionManager())
        assert reader.root()["link"]["target"].value == "changed"
        reader.close()
    finally:
        transaction.abort()
        for db in databases.values():
            db.close()


def test_a_closed_second_database_leaves_the_idle_group(collection):
    first, second = collection
    conn = first.open()
    target = Item("in second")
    conn.get_connection("second").add(target)
    conn.root()["link"] = target
    transaction.commit()
    conn.close()
    second.close()
    again = first.open()
    assert sorted(again.connections) == ["first"]
    with pytest.raises(ConnectionStateError):
        again.root()["link"].value
    transaction.abort()


def test_idle_groups_count_as_idle_and_go_with_their_first_connection(caplog):
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases, pool_size=2)
    second = atoll.DB(MemoryStorage(), database_name="second", databases=databases, pool_size=2)
    try:
        for _ in range(3):
            groups = [first.open(transaction.TransactionManager()) for _ in range(4)]
            for conn in groups:
                conn.get_connection("second")
                conn.close()
        assert first._pool.in_use == 0 and second._pool.in_use == 0
        assert len(first._pool.idle) == 2 and not second._pool.idle  # parked in the groups
        assert "'second' has" not in caplog.text  # parked members are not "open"
        kept = {c.connections["second"] for _, c in first._pool.idle}
        # The pool discarded the other groups, and with them their second connections.
        assert len(second.storage._views) == len(kept) == 2
    finally:
        first.close()
        second.close()


def test_unknown_database_in_a_record_is_reported(collection):
    first, second = collection
    conn = first.open()
    conn.get_connection("second").root()["t"] = target = Item(1)
    transaction.commit()
    conn.root()["t"] = target
    transaction.commit()
    del first.databases["second"]
    # A new connection (not the pooled one: its idle group keeps its bound connection
    # to "second", as ZODB's does).
    reader = first.open(transaction.TransactionManager())
    assert reader is not conn
    with pytest.raises(InvalidObjectReference, match="'second'"):
        reader.root()["t"]
    first.databases["second"] = second


def test_read_ahead_follows_references_into_another_database(collection):
    first, second = collection
    conn = first.open()
    other = conn.get_connection("second")
    targets = [Item(i) for i in range(100)]
    for i, target in enumerate(targets):
        other.root()[i] = target
    transaction.commit()
    conn.root()["links"] = [*targets]
    transaction.commit()
    reader = first.open(transaction.TransactionManager())
    links = reader.root()["links"]
    view = reader.get_connection("second")._view
    singles, batches = [], []
    load, load_many = view.load, view.load_many
    view.load = lambda oid: singles.append(oid) or load(oid)
    view.load_many = lambda oids: batches.append(len(oids)) or load_many(oids)
    assert sum(link.value for link in links) == sum(range(100))
    assert singles == []  # every record of the second database came in a batch
    assert sum(batches) == 100 and len(batches) < 10


def test_read_ahead_loads_partners_in_another_database_in_batches(collection):
    first, second = collection
    conn = first.open()
    other = conn.get_connection("second")
    items = []
    for i in range(100):
        partner = Item(f"partner {i}")
        other.add(partner)
        items.append(Item(partner))
    conn.root()["items"] = PersistentMapping(enumerate(items))
    other.root()["keep"] = PersistentMapping(enumerate(item.value for item in items))
    transaction.commit()
    reader = first.open(transaction.TransactionManager())
    mapping = reader.root()["items"]
    assert len(mapping) == 100
    view = reader.get_connection("second")._view
    singles = []
    load = view.load
    view.load = lambda oid: singles.append(oid) or load(oid)
    assert [item.value.value for item in mapping.values()] == [f"partner {i}" for i in range(100)]
    assert singles == []  # every partner came with the batch that referred to it


def test_a_collection_mixing_memory_and_durable_databases_says_so_once(tmp_path, caplog):
    from atoll.storage.memory import MemoryStorage
    from atoll.storage.sqlite import SQLiteStorage

    databases: dict = {}
    with caplog.at_level("WARNING", logger="atoll.db"):
        atoll.DB(SQLiteStorage(tmp_path / "a.db"), database_name="a", databases=databases)
        atoll.DB(SQLiteStorage(tmp_path / "b.db"), database_name="b", databases=databases)
        assert not [r for r in caplog.records if "crash-safe" in r.getMessage()]
        atoll.DB(MemoryStorage(), database_name="scratch", databases=databases)
        atoll.DB(MemoryStorage(), database_name="scratch2", databases=databases)
    said = [r.getMessage() for r in caplog.records if "crash-safe" in r.getMessage()]
    assert len(said) == 1 and "memory database (scratch)" in said[0]
    for db in databases.values():
        db.close()


def test_a_commit_of_two_sqlite_files_decides_in_the_first_and_prepares_the_other(tmp_path):
    import sqlite3

    from atoll.storage.sqlite import SQLiteStorage

    databases: dict = {}
    paths = sorted(str(tmp_path / name) for name in ("a.db", "b.db"))
    for name, path in zip("ab", paths):
        atoll.DB(SQLiteStorage(path), database_name=name, databases=databases)
    conn = databases["a"].open()
    conn.root.x = 1
    conn.get_connection("b").root.x = 1
    transaction.commit()
    conn.close()
    for db in databases.values():
        db.close()
    counts = []
    for path in paths:
        raw = sqlite3.connect(path)
        counts.append(
            (raw.execute("SELECT count(*) FROM commit_decisions").fetchone()[0],
             raw.execute("SELECT count(*) FROM commit_pending").fetchone()[0])
        )
        raw.close()
    # One decision, in whichever file votes first; the other prepared and finished.
    assert sorted(counts) == [(0, 0), (1, 0)]


def test_the_members_of_a_commit_are_complete_by_the_first_vote():
    from atoll.storage.base import CommitMembers, Member, TransactionMeta, commit_role

    # As Connection.tpc_begin does: each storage's metadata is made as it begins,
    # holding the one CommitMembers of the commit, which grows until every storage
    # has begun (the transaction package begins all before it votes any).
    members = CommitMembers()
    members.add(Member("a", "sqlite:/a.db"))
    first = TransactionMeta(id="shared", members=members, order_key="a")
    members.add(Member("b", "sqlite:/b.db"))
    second = TransactionMeta(id="shared", members=members, order_key="b")
    assert list(first.members) == list(second.members) == [Member("a", "sqlite:/a.db"), Member("b", "sqlite:/b.db")]
    assert commit_role(first).decider and not commit_role(first).alone
    assert not commit_role(second).decider and commit_role(second).decider_home == "sqlite:/a.db"
    assert len(members) == 2 and members[1] == Member("b", "sqlite:/b.db")
