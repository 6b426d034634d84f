"""Undo in one database (atoll.undo, the DB methods): every history-preserving storage."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import POSKeyError, ReadOnlyError, UndoError
from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage
from atoll.storage.sqlite import SQLiteStorage


def _storage(kind: str, tmp_path: Path, name: str, **kwargs):
    if kind == "memory":
        return MemoryStorage() if kwargs.get("keep_history", True) else MinimalMemoryStorage()
    if kind == "sqlite":
        return SQLiteStorage(tmp_path / "undo.db", **kwargs)
    if kind == "sqlite-cached":  # with a record cache, which must not serve undone states
        return SQLiteStorage(tmp_path / "undo.db", cache_size_bytes=1 << 20, **kwargs)
    import postgres_support

    return postgres_support.make_storage(name, **kwargs)


@pytest.fixture(params=["memory", "sqlite", "sqlite-cached", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[atoll.DB]:
    database = atoll.DB(_storage(request.param, tmp_path, request.node.name))
    yield database
    database.close()


def commit(db: atoll.DB, note: str, change) -> None:
    with db.transaction(note) as conn:
        change(conn.root())


def entry(db: atoll.DB, description: str) -> dict:
    return next(e for e in db.undoLog(0, 100) if e["description"] == description)


def undo(db: atoll.DB, description: str, note: str | None = None) -> None:
    db.undo(entry(db, description)["id"])
    if note:
        transaction.get().note(note)
    transaction.commit()


def test_undo_a_change(db):
    assert db.supportsUndo()
    commit(db, "set", lambda root: root.update(x=1))
    commit(db, "change", lambda root: root.update(x=2, y=3))
    reader = db.open(transaction.TransactionManager())
    assert reader.root()["x"] == 2
    undo(db, "change", "undo change")
    assert reader.root()["x"] == 2  # its transaction has not moved on yet
    reader.transaction_manager.begin()
    assert reader.root()["x"] == 1 and "y" not in reader.root()
    with db.transaction() as conn:
        assert dict(conn.root()) == {"x": 1}
    # History stays: the change and the undo are both there.
    assert [e["description"] for e in db.undoLog(0, 3)] == ["undo change", "change", "set"]
    reader.close()


def test_undo_a_creation_ends_the_object(db):
    commit(db, "holder", lambda root: root.update(holder=PersistentMapping()))
    with db.transaction("create") as conn:
        made = PersistentMapping(v=1)
        conn.root()["holder"]["made"] = made
        conn.add(made)
    oid = made._p_oid
    keeper = db.open(transaction.TransactionManager())
    kept = keeper.root()["holder"]["made"]
    assert kept["v"] == 1
    undo(db, "create")
    keeper.transaction_manager.begin()
    assert "made" not in keeper.root()["holder"]
    with pytest.raises(POSKeyError):
        kept["v"]  # the cached object was invalidated; its state is gone
    with db.transaction() as conn:
        with pytest.raises(POSKeyError):
            conn.get(oid)
    assert len(db) == 2  # the root and the holder
    keeper.close()
    undo(db, "")  # undo the undo: the object is back
    with db.transaction() as conn:
        assert conn.get(oid)["v"] == 1 and conn.root()["holder"]["made"]["v"] == 1


def test_undo_a_deletion_from_a_btree(db):
    def fill(root):
        root["tree"] = OOBTree()
        for i in range(50):
            root["tree"][f"k{i:02}"] = i

    commit(db, "fill", fill)
    commit(db, "delete", lambda root: root["tree"].pop("k07"))
    with db.transaction() as conn:
        assert "k07" not in conn.root()["tree"]
    undo(db, "delete")
    with db.transaction() as conn:
        tree = conn.root()["tree"]
        assert tree["k07"] == 7 and len(tree) == 50


def test_undo_of_an_undo(db):
    commit(db, "set", lambda root: root.update(x=1))
    commit(db, "change", lambda root: root.update(x=2))
    undo(db, "change", "first undo")
    undo(db, "first undo", "second undo")
    with db.transaction() as conn:
        assert conn.root()["x"] == 2
    undo(db, "second undo")
    with db.transaction() as conn:
        assert conn.root()["x"] == 1


def test_undo_refused_after_a_later_change(db):
    commit(db, "set", lambda root: root.update(box=PersistentMapping(v=1)))
    commit(db, "change", lambda root: root["box"].update(v=2))
    commit(db, "later", lambda root: root["box"].update(v=3))
    oid = None
    with db.transaction() as conn:
        oid = conn.root()["box"]._p_oid
    db.undo(entry(db, "change")["id"])
    with pytest.raises(UndoError) as caught:
        transaction.commit()
    assert caught.value.oid == oid
    assert "0x" in str(caught.value) and "later transaction" in str(caught.value)
    transaction.abort()
    with db.transaction() as conn:
        assert conn.root()["box"]["v"] == 3  # nothing was written
    assert db.undoLog(0, 1)[0]["description"] == "later"
    undo(db, "later")  # a refused undo leaves nothing behind: the next one works
    with db.transaction() as conn:
        assert conn.root()["box"]["v"] == 2


def test_undo_merged_by_resolve_conflict(db):
    def fill(root):
        root["tree"] = OOBTree()
        for i in range(10):
            root["tree"][f"k{i}"] = i

    commit(db, "fill", fill)
    commit(db, "add a", lambda root: root["tree"].update({"k55": 1}))
    commit(db, "add b", lambda root: root["tree"].update({"k77": 2}))  # the same bucket
    undo(db, "add a")  # the bucket changed since: BTrees merge the two
    with db.transaction() as conn:
        tree = conn.root()["tree"]
        assert "k55" not in tree and tree["k77"] == 2 and len(tree) == 11


def test_undo_and_a_change_in_one_transaction(db):
    commit(db, "set", lambda root: root.update(box=PersistentMapping(v=1), other=PersistentMapping(v=1)))
    commit(db, "change", lambda root: root["box"].update(v=2))
    conn = db.open()
    conn.root()["other"]["v"] = 5
    db.undo(entry(db, "change")["id"])
    transaction.commit()  # one commit: the connection's change and the undo
    assert conn.root()["box"]["v"] == 1 and conn.root()["other"]["v"] == 5
    assert db.undoLog(0, 1)[0]["size"] > 0
    # Changing the object the undo restores, in the same transaction, is refused.
    commit(db, "again", lambda root: root["box"].update(v=7))
    conn.root()["box"]["v"] = 8
    db.undo(entry(db, "again")["id"])
    with pytest.raises(UndoError, match="same transaction"):
        transaction.commit()
    transaction.abort()
    conn.close()


def test_undo_multiple(db):
    commit(db, "set", lambda root: root.update(x=1))
    commit(db, "two", lambda root: root.update(x=2))
    commit(db, "three", lambda root: root.update(x=3, y=1))
    db.undoMultiple([entry(db, "three")["id"], entry(db, "two")["id"]])
    transaction.commit()
    with db.transaction() as conn:
        assert dict(conn.root()) == {"x": 1}


def test_undo_multiple_with_a_gap_is_refused(db):
    commit(db, "set", lambda root: root.update(x=1))
    commit(db, "two", lambda root: root.update(x=2))
    commit(db, "three", lambda root: root.update(x=3))
    commit(db, "four", lambda root: root.update(x=4))
    with pytest.raises(UndoError, match="changed between them"):
        db.undoMultiple([entry(db, "four")["id"], entry(db, "two")["id"]])
    transaction.commit()  # nothing joined
    with db.transaction() as conn:
        assert conn.root()["x"] == 4


def test_savepoint_rollback_forgets_the_undo(db):
    commit(db, "set", lambda root: root.update(x=1))
    commit(db, "change", lambda root: root.update(x=2))
    savepoint = transaction.savepoint()
    db.undo(entry(db, "change")["id"])
    savepoint.rollback()
    transaction.commit()
    with db.transaction() as conn:
        assert conn.root()["x"] == 2


def test_undo_log_entries(db):
    with db.transaction() as conn:
        txn = transaction.get()
        conn.transaction_manager.get().setUser("ann")
        conn.transaction_manager.get().note("first")
        conn.transaction_manager.get().setExtendedInfo("ticket", 42)
        conn.root()["x"] = 1
    for i in range(5):
        commit(db, f"n{i}", lambda root: root.update(x=i))
    log = db.undoLog()
    assert [e["description"] for e in log[:6]] == ["n4", "n3", "n2", "n1", "n0", "first"]
    first = log[5]
    assert first["user_name"].endswith("ann") and first["ticket"] == 42 and first["size"] > 0
    assert isinstance(first["id"], bytes) and isinstance(first["time"], float)
    assert first["databases"] == (db.database_name,)
    assert [e["description"] for e in db.undoLog(1, 3)] == ["n3", "n2"]
    assert [e["description"] for e in db.undoLog(2, -2)] == ["n2", "n1"]
    odd = db.undoLog(0, 2, lambda e: e["description"] in ("n3", "n1", "first"))
    assert [e["description"] for e in odd] == ["n3", "n1"]
    assert [e["description"] for e in db.undoInfo(0, 20, {"ticket": 42})] == ["first"]
    del txn


def test_undo_refused_at_or_before_the_last_pack(db):
    commit(db, "old", lambda root: root.update(x=1))
    commit(db, "packed over", lambda root: root.update(x=2))
    old_id = entry(db, "packed over")["id"]
    db.pack()
    commit(db, "after pack", lambda root: root.update(x=3))
    with pytest.raises(UndoError, match="last pack"):
        db.undo(old_id)
    undo(db, "after pack")  # later transactions still can be
    with db.transaction() as conn:
        assert conn.root()["x"] == 2


def test_bad_ids(db):
    with pytest.raises(UndoError, match="not an undo id"):
        db.undo(b"no such id")
    with pytest.raises(UndoError, match="has no transaction"):
        db.undo(b"\x01" * 8)
    with pytest.raises(UndoError, match="not in the collection"):
        db.undo(db.undoLog()[0]["id"].replace(b"@unnamed", b"@elsewhere"))


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
def test_history_free_storages_cannot_undo(kind, tmp_path, request):
    db = atoll.DB(_storage(kind, tmp_path, request.node.name, keep_history=False))
    try:
        commit(db, "set", lambda root: root.update(x=1))
        assert not db.supportsUndo()
        with pytest.raises(UndoError, match="keeps no history"):
            db.undo(db.undoLog()[0]["id"])
    finally:
        db.close()


def test_read_only_storage_cannot_undo(tmp_path):
    path = tmp_path / "ro.db"
    db = atoll.DB(SQLiteStorage(path))
    commit(db, "set", lambda root: root.update(x=1))
    db.close()
    db = atoll.DB(SQLiteStorage(path, read_only=True))
    try:
        with pytest.raises(ReadOnlyError, match="read-only"):
            db.undo(db.undoLog()[0]["id"])
    finally:
        db.close()
