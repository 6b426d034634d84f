"""DB: construction, pools, the collection dict, pack, context managers, atoll.open/connect."""

from __future__ import annotations

import datetime
import threading

import time

import pytest
import transaction

import atoll
from atoll.errors import ConnectionStateError, POSKeyError, ReadOnlyError
from atoll.ids import ROOT_OID
from atoll.storage import MemoryStorage
from helpers import Item


def test_repr_names_class_and_database():
    db = atoll.DB(None, database_name="catalog")
    assert "DB" in repr(db) and "catalog" in repr(db)


def test_duplicate_name_leaves_databases_unchanged():
    databases: dict = {}
    atoll.DB(None, database_name="a", databases=databases)
    storage = MemoryStorage()
    with pytest.raises(ValueError, match="database_name 'a' already in databases"):
        atoll.DB(storage, database_name="a", databases=databases)
    assert list(databases) == ["a"]


def test_close_keeps_the_database_in_the_collection():
    databases: dict = {}
    db = atoll.DB(None, database_name="a", databases=databases)
    db.close()
    assert databases == {"a": db}


def test_pool_reuses_closed_connections():
    db = atoll.DB(None)
    first = db.open()
    first.close()
    assert db.open() is first


def test_pool_keeps_at_most_pool_size_idle_connections():
    db = atoll.DB(None, pool_size=2)
    managers = [transaction.TransactionManager() for _ in range(4)]
    connections = [db.open(m) for m in managers]
    for connection in connections:
        connection.close()
    assert len(db._pool.idle) == 2
    # The most recently closed ones are kept, warm caches first.
    assert db.open() is connections[-1]


def test_pool_drops_idle_connections_after_timeout():
    db = atoll.DB(None, pool_timeout=0.05)
    first, second = db.open(), db.open()
    first.close()
    time.sleep(0.1)  # first has been idle longer than the timeout when second returns
    second.close()
    assert [c for _, c in db._pool.idle] == [second]
    assert first.opened is None


def test_pool_keeps_idle_connections_within_timeout():
    db = atoll.DB(None, pool_timeout=3600)
    first, second = db.open(), db.open()
    first.close()
    second.close()
    assert [c for _, c in db._pool.idle] == [first, second]


def test_transaction_context_manager_commits_and_closes():
    db = atoll.DB(None)
    with db.transaction(note="set x") as conn:
        conn.root()["x"] = 1
    assert conn.opened is None
    assert db.history(ROOT_OID)[0]["description"] == "set x"
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            conn.root()["x"] = 2
            raise RuntimeError("boom")
    with db.transaction() as conn:
        assert conn.root()["x"] == 1


class ReopenableStorage(MemoryStorage):
    """A memory storage that survives close(), so a test can look inside afterwards."""

    closes = 0

    def close(self) -> None:
        self.closes += 1


def test_connect_commits_on_clean_exit_and_closes_the_db():
    storage = ReopenableStorage()
    with atoll.connect(storage) as conn:
        conn.root()["x"] = 1
    assert conn.opened is None and storage.closes == 1
    db = atoll.DB(storage)
    with db.transaction() as conn:
        assert conn.root()["x"] == 1


def test_connect_aborts_on_error():
    storage = ReopenableStorage()
    with pytest.raises(KeyError):
        with atoll.connect(storage) as conn:
            conn.root()["x"] = 1
            raise KeyError("boom")
    assert atoll.DB(storage).open().root().get("x") is None


def test_open_with_no_target_is_in_memory():
    db = atoll.open()
    assert isinstance(db.storage, MemoryStorage)


def test_len_counts_current_objects_including_root():
    db = atoll.DB(None)
    assert len(db) == 1
    with db.transaction() as conn:
        conn.root()["a"] = Item(Item(1))
    assert len(db) == 3


def test_last_transaction_increases_with_every_commit():
    db = atoll.DB(None)
    seen = [db.lastTransaction()]
    for i in range(5):
        with db.transaction() as conn:
            conn.root()["i"] = i
        seen.append(db.lastTransaction())
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_open_before_a_datetime():
    db = atoll.DB(None)
    with db.transaction() as conn:
        conn.root()["when"] = "early"
    moment = datetime.datetime.now(datetime.timezone.utc)
    with db.transaction() as conn:
        conn.root()["when"] = "late"
    past = db.open(before=moment)
    assert past.root()["when"] == "early"
    with pytest.raises(ValueError):
        db.open(at=moment, before=moment)


def test_pack_removes_old_revisions_and_unreachable_objects():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["keep"] = Item(1)
        conn.root()["drop"] = dropped = Item(2)
    for i in range(3):
        with db.transaction() as conn:
            conn.root()["keep"].value = i
    with db.transaction() as conn:
        del conn.root()["drop"]
    dropped_oid = dropped._p_oid
    lines = []
    stats = db.pack(progress=lines.append)
    assert stats.objects_removed == 1 and stats.revisions_removed >= 3
    assert lines and "removed" in lines[-1]
    with pytest.raises(POSKeyError):
        db.storage.history(dropped_oid)
    assert len(db.history(ROOT_OID, size=10)) == 1
    with db.transaction() as conn:
        assert conn.root()["keep"].value == 2


def test_pack_in_a_collection_keeps_unreachable_objects():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    with first.transaction() as conn:
        conn.root()["x"] = orphan = Item(1)
    with first.transaction() as conn:
        del conn.root()["x"]
    lines = []
    stats = first.pack(progress=lines.append)
    assert stats.objects_removed == 0
    assert "old revisions only" in lines[0]
    assert first.storage.history(orphan._p_oid)


def test_read_only_storage_refuses_commits():
    storage = MemoryStorage()
    atoll.DB(storage).close()
    reopened = MemoryStorage()
    reopened._objects, reopened._last_tid = storage._objects, storage._last_tid
    reopened.read_only = True
    db = atoll.DB(reopened)
    conn = db.open()
    assert conn.isReadOnly()
    conn.root()["x"] = 1
    with pytest.raises(ReadOnlyError):
        transaction.commit()
    transaction.abort()


def increment_in_threads(db: atoll.DB, increments: int, threads: int = 4) -> None:
    """Each thread, with its own connection, adds 1 to every counter ``increments``
    times, retrying conflicts; then every counter must show the sum."""
    with db.transaction() as conn:
        for name in "abcd":
            conn.root()[name] = Item(0)
    errors = []

    def work() -> None:
        try:
            manager = transaction.TransactionManager()
            conn = db.open(manager)
            for _ in range(increments):
                # Retries, not their number, are what this tests: under load a thread
                # was seen to lose 70 times in a row to the other three.
                for attempt in manager.attempts(1000):
                    with attempt:
                        for key in "abcd":
                            conn.root()[key].value += 1
            conn.close()
        except Exception as exc:  # reported below; a thread cannot raise into the test
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    with db.transaction() as conn:
        assert [conn.root()[key].value for key in "abcd"] == [increments * threads] * 4


def test_threads_with_own_connections_lose_no_update():
    increment_in_threads(atoll.DB(None), 50)

def test_close_shuts_connections_still_in_use_and_unregisters_them():
    db = atoll.DB(None)
    conn = db.open()
    conn.root()["x"] = 1
    db.close()
    assert conn.opened is None
    with pytest.raises(ConnectionStateError):
        conn.root()
    with pytest.raises(ConnectionStateError, match="closed"):
        transaction.commit()  # its change cannot be saved any more, and says why
    transaction.abort()
    transaction.commit()  # no synchronizer of the closed database is called


def test_a_connection_whose_storage_fails_at_close_is_not_pooled(caplog):
    from atoll.errors import StorageError

    db = atoll.DB(None)
    conn = db.open()

    def broken_poll():
        raise StorageError("server gone")

    conn._view.poll = broken_poll
    conn.close()  # no exception: nothing was pending, and the failure is logged
    assert "server gone" in caplog.text
    assert conn.opened is None
    assert db.open() is not conn


def test_threads_on_an_sqlite_file_lose_no_update(tmp_path):
    # SQLite views share the storage's writer and record cache across threads.
    db = atoll.DB(str(tmp_path / "threads.db"))
    increment_in_threads(db, 25)
    db.close()


def test_historical_pool_keeps_at_most_its_size_per_moment():
    db = atoll.DB(None, historical_pool_size=2)
    with db.transaction() as conn:
        conn.root()["x"] = 1
    at = db.lastTransaction()
    opened = [db.open(transaction.TransactionManager(), at=at) for _ in range(3)]
    for connection in opened:
        connection.close()
    (pool,) = db._historical.values()
    assert [c for _, c in pool.idle] == opened[1:]  # the most recently closed two
    assert opened[0].opened is None


def test_historical_connections_idle_past_the_timeout_are_dropped():
    db = atoll.DB(None, historical_timeout=0.05)
    with db.transaction() as conn:
        conn.root()["x"] = 1
    at = db.lastTransaction()
    first = db.open(transaction.TransactionManager(), at=at)
    second = db.open(transaction.TransactionManager(), at=at)
    first.close()
    time.sleep(0.1)
    second.close()
    (pool,) = db._historical.values()
    assert [c for _, c in pool.idle] == [second]

