"""Behaviours ZODB's own tests expect of a connection and a database (issue 17).

Each test is named after the behaviour it checks; ZODB is not needed to run them.
"""

from __future__ import annotations

import datetime
import logging
import threading

import pytest
import transaction
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import ConnectionStateError, ReadOnlyHistoryError
from atoll.ids import next_tid, p64, u64
from atoll.storage import MemoryStorage


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


def test_commit_after_refused_historical_change_fails_and_abort_recovers(db):
    conn = db.open()
    conn.root()["first"] = PersistentMapping(count=0)
    transaction.commit()
    manager = transaction.TransactionManager()
    past = db.open(manager, at=db.lastTransaction())
    with pytest.raises(ReadOnlyHistoryError):
        past.root()["first"]["count"] = 5
    with pytest.raises(Exception):
        manager.commit()
    manager.abort()
    assert past.root()["first"]["count"] == 0
    past.close()
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
