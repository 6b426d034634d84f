"""A connection's memory stays bounded, its resources are released, and what cannot
be stored fails the commit with an error that names the object."""

from __future__ import annotations

import re
import threading

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent import Persistent

import atoll
from atoll.errors import ConflictError, StorageTransactionError, UnpicklableError
from helpers import Item


# -- the cache stays near its target size ------------------------------------------------


def test_cache_stays_near_its_target_size_across_transactions():
    db = atoll.DB(None, cache_size=400)
    conn = db.open()
    conn.root()["tree"] = tree = OOBTree()
    transaction.commit()
    for i in range(3000):
        tree[i] = Item(i)
        transaction.commit()
    # It was 3,002 objects with state. Ghosts still referenced (by buckets that hold
    # state) stay in the cache, as in ZODB, without their state.
    assert conn._cache.cache_non_ghost_count <= 400
    assert len(conn._cache) < 1000
    assert tree[2999].value == 2999  # and the ghosts load again
    db.close()


def test_cache_shrinks_when_a_transaction_only_reads():
    db = atoll.DB(None, cache_size=50)
    with db.transaction() as conn:
        conn.root()["items"] = [Item(i) for i in range(500)]
    conn = db.open()
    for item in conn.root()["items"]:
        item.value
    assert conn._cache.cache_non_ghost_count > 50
    transaction.abort()  # the end of a read-only transaction is a boundary too
    assert conn._cache.cache_non_ghost_count <= 50
    db.close()


# -- atoll.connect as a context manager ---------------------------------------------------


def test_connect_with_block_releases_everything_when_the_commit_fails(tmp_path):
    path = str(tmp_path / "app.db")
    with atoll.connect(path) as setup:
        setup.root()["item"] = Item(0)
    other = atoll.DB(path)
    with pytest.raises(ConflictError):
        with atoll.connect(path) as conn:
            checkpointer = conn.db().storage._checkpointer
            checkpointer.request()  # the background checkpoint thread runs
            thread = checkpointer._thread
            assert thread is not None and thread.is_alive()
            conn.root()["item"].value = 1
            with other.transaction() as meanwhile:  # commits first
                meanwhile.root()["item"].value = 2
    db = conn.db()
    assert conn.opened is None
    assert db._closed
    assert db.storage._closed
    assert not thread.is_alive()
    assert transaction.get()._resources == []  # the default manager has nothing left of it
    with other.transaction() as check:
        assert check.root()["item"].value == 2
    other.close()


def test_connect_with_block_closes_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with atoll.connect(str(tmp_path / "app.db")) as conn:
            conn.root()["item"] = Item(1)
            raise RuntimeError("boom")
    assert conn.opened is None and conn.db()._closed
    with atoll.connect(str(tmp_path / "app.db")) as conn:
        assert "item" not in conn.root()


# -- one participant per storage ------------------------------------------------------------


def test_two_connects_to_one_path_in_one_transaction_are_refused(tmp_path):
    path = str(tmp_path / "app.db")
    first, second = atoll.connect(path), atoll.connect(path)  # both on the default manager
    first.root()["a"] = Item(1)
    second.root()["b"] = Item(2)
    with pytest.raises(StorageTransactionError, match="two connections to the storage of database"):
        transaction.commit()  # was: the second vote waited 60 s for the first's write lock
    transaction.abort()
    first.close()
    second.close()
    with atoll.connect(path) as conn:
        assert "a" not in conn.root() and "b" not in conn.root()  # nothing written


def test_two_connections_of_one_db_in_one_transaction_are_refused():
    db = atoll.DB(None)
    first, second = db.open(), db.open()
    first.root()["a"] = Item(1)
    second.root()["b"] = Item(2)
    with pytest.raises(StorageTransactionError, match="give each connection its own transaction manager"):
        transaction.commit()  # was: a deadlock on the storage's commit lock
    transaction.abort()
    third = db.open(transaction.TransactionManager())
    assert "a" not in third.root() and "b" not in third.root()
    db.close()


# -- objects that cannot be pickled ---------------------------------------------------------


class Holder(Persistent):
    pass


def _local_instance():
    class Local:
        pass

    return Local()


def _local_persistent():
    class LocalPersistent(Persistent):
        pass

    return LocalPersistent()


def _deep(levels: int) -> list:
    nested: list = []
    for _ in range(levels):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    "value, detail",
    [
        (lambda: 1, r"\.value is a lambda function"),
        ({"x": [1, threading.Lock()]}, r"\.value\['x'\]\[1\] is a _thread.lock"),
        ("file", r"\.value is an open file \(_io.BufferedReader\)"),
        (_local_instance(), r"\.value is an instance of .*_local_instance.<locals>.Local, a class defined inside"),
        (_deep(100_000), r"\.value\[0\]\[0\].* nests containers deeper than pickle can follow"),
    ],
    ids=["lambda", "lock", "open-file", "local-class", "deep-nesting"],
)
def test_unpicklable_object_commit_fails_naming_class_oid_and_path(tmp_path, value, detail):
    db = atoll.DB(str(tmp_path / "app.db"))
    before = db.lastTransaction()
    conn = db.open()
    holder = Holder()
    with open(__file__, "rb") as file:
        holder.value = file if value == "file" else value
        conn.root()["holder"] = holder
        conn.add(holder)
        with pytest.raises(UnpicklableError) as info:
            transaction.commit()
    transaction.abort()
    error = info.value
    assert error.class_name == "test_robust_connection.Holder"
    assert error.oid is not None and error.database_name == "unnamed"
    assert f"cannot store test_robust_connection.Holder {hex(int.from_bytes(error.oid, 'big'))}" in str(error)
    assert re.search(detail, str(error)), str(error)
    assert db.lastTransaction() == before  # nothing written
    assert "holder" not in db.open(transaction.TransactionManager()).root()
    db.close()


def test_unpicklable_class_commit_fails_naming_the_class():
    db = atoll.DB(None)
    conn = db.open()
    obj = _local_persistent()
    conn.add(obj)
    with pytest.raises(UnpicklableError, match="its class .*LocalPersistent cannot be pickled .*defined inside a function"):
        transaction.commit()
    transaction.abort()
    db.close()


def test_unpicklable_object_in_a_savepoint_fails_the_same_way():
    db = atoll.DB(None)
    conn = db.open()
    conn.root()["h"] = holder = Holder()
    holder.lock = threading.Lock()
    with pytest.raises(UnpicklableError, match=r"\.lock is a _thread.lock"):
        transaction.savepoint()
    transaction.abort()
    db.close()
