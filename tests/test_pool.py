"""The connection pool gives back what it drops, counts only connections that opened,
and never hands out a connection while its cache is being emptied."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import pytest
import transaction

import atoll
from atoll.errors import StorageError
from atoll.ids import ROOT_OID
from helpers import Item


def test_failed_open_does_not_inflate_the_pools_in_use_count(caplog, monkeypatch):
    db = atoll.DB(None, pool_size=2)
    storage = db.storage

    def broken_view(before=None):
        raise StorageError("server gone")

    monkeypatch.setattr(storage, "open_view", broken_view)
    for _ in range(3):
        with pytest.raises(StorageError, match="server gone"):
            db.open(transaction.TransactionManager())
    monkeypatch.undo()
    assert db._pool.in_use == 0
    with caplog.at_level(logging.WARNING, logger="atoll.db"):
        first = db.open(transaction.TransactionManager())
        second = db.open(transaction.TransactionManager())
    assert db._pool.in_use == 2
    assert "more than its pool size" not in caplog.text  # was: 5 open, pool size 2
    first.close()
    second.close()
    db.close()


def test_failed_open_of_a_pooled_connection_discards_it(monkeypatch):
    db = atoll.DB(None)
    conn = db.open()
    conn.close()

    def broken_poll():
        raise StorageError("server gone")

    monkeypatch.setattr(conn._view, "poll", broken_poll)
    with pytest.raises(StorageError):
        db.open()
    assert db._pool.in_use == 0 and db._pool.idle == []
    assert conn.opened is None and conn.transaction_manager is None
    fresh = db.open()
    assert fresh is not conn
    fresh.close()
    db.close()


def test_failed_historical_open_forgets_its_pool(monkeypatch):
    db = atoll.DB(None)
    tid = db.lastTransaction()

    def broken_view(before=None):
        raise StorageError("server gone")

    monkeypatch.setattr(db.storage, "open_view", broken_view)
    with pytest.raises(StorageError):
        db.open(at=tid)
    assert db._historical == {}
    db.close()


def test_failed_open_in_a_group_leaves_the_group_unchanged(monkeypatch):
    databases: dict = {}
    first = atoll.DB(None, database_name="first", databases=databases)
    second = atoll.DB(None, database_name="second", databases=databases)
    conn = first.open()

    def broken_view(before=None):
        raise StorageError("server gone")

    monkeypatch.setattr(second.storage, "open_view", broken_view)
    with pytest.raises(StorageError):
        conn.get_connection("second")
    assert list(conn.connections) == ["first"]
    assert second._pool.in_use == 0
    monkeypatch.undo()
    assert conn.get_connection("second").db() is second
    conn.close()


def test_pool_dropped_connections_release_their_views(tmp_path):
    was = gc.isenabled()
    gc.disable()  # what is closed must be closed by the pool, not found by the collector
    try:
        db = atoll.DB(str(tmp_path / "app.db"), pool_size=1)
        managers = [transaction.TransactionManager() for _ in range(3)]
        connections = [db.open(m) for m in managers]
        for conn in connections:
            conn.root()  # each view reads: its sqlite3 connection is in use
        before = _open_descriptors()
        for conn in connections:
            conn.close()
        assert [c for _, c in db._pool.idle] == [connections[2]]
        for dropped in connections[:2]:  # the two the pool did not keep
            assert dropped._view._closed
            with pytest.raises(StorageError):
                dropped._view.load(ROOT_OID)
        assert not connections[2]._view._closed
        assert _open_descriptors() < before  # their files were closed at once
        db.close()
    finally:
        if was:
            gc.enable()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cache_minimize_does_not_race_with_taking_a_pooled_connection():
    db = atoll.DB(None)
    with db.transaction() as conn:
        conn.root()["items"] = [Item(i) for i in range(100)]
    idle = db.open()
    idle.root()["items"][0].value
    idle.close()
    minimizing, minimized = threading.Event(), threading.Event()
    minimize = idle._cache.minimize

    class SlowCache:  # the idle connection's cache, slow to empty
        def __getattr__(self, name):
            return getattr(cache, name)

        def minimize(self):
            minimizing.set()
            time.sleep(0.3)
            minimize()
            minimized.set()

    cache = idle._cache
    idle._cache = SlowCache()
    thread = threading.Thread(target=db.cacheMinimize)
    thread.start()
    try:
        assert minimizing.wait(10)
        taken = db.open()  # waits until cacheMinimize is done with the idle connection
        assert taken is idle
        assert minimized.is_set()  # was: handed out while its cache was being emptied
    finally:
        thread.join(10)
        idle._cache = cache
    taken.close()
    db.close()
