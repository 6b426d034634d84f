"""Bad arguments to DB and Connection get one clear error, and nothing happens."""

from __future__ import annotations

import time

import pytest
import transaction
import ZConfig

import atoll
import atoll.config
from atoll.ids import ROOT_OID
from helpers import Item


@pytest.mark.parametrize(
    "oid, error, message",
    [
        (1, TypeError, "oid must be 8 bytes .* not int 1"),
        ("abc", TypeError, "oid must be 8 bytes .* not str 'abc'"),
        (b"\x01", ValueError, "oid must be 8 bytes long, not 1"),
    ],
)
def test_conn_get_of_a_bad_oid_says_what_an_oid_is(oid, error, message):
    db = atoll.DB(None)
    conn = db.open()
    with pytest.raises(error, match=message):
        conn.get(oid)
    assert conn.get(ROOT_OID) is conn.root()
    db.close()


def _history_db(tmp_path):
    db = atoll.DB(str(tmp_path / "app.db"))
    with db.transaction() as conn:
        conn.root()["item"] = Item(1)
    with db.transaction() as conn:
        conn.root()["item"].value = 2
    return db


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"t": "now"}, TypeError, "pack time t must be POSIX seconds"),
        ({"t": float("nan")}, TypeError, "pack time t must be POSIX seconds"),
        ({"days": -5}, ValueError, "pack days must be >= 0"),
        ({"days": "1"}, TypeError, "pack days must be a number"),
        ({"t": time.time() + 3600}, ValueError, "cannot pack as of a future moment"),
    ],
)
def test_db_pack_with_a_bad_time_packs_nothing(tmp_path, kwargs, error, message):
    db = _history_db(tmp_path)
    oid = db.open().root()["item"]._p_oid
    transaction.abort()
    assert len(db.history(oid, size=10)) == 2
    with pytest.raises(error, match=message):
        db.pack(**kwargs)
    assert len(db.history(oid, size=10)) == 2  # no history removed
    db.close()


def test_db_pack_of_days_before_now_still_works(tmp_path):
    db = _history_db(tmp_path)
    oid = db.open().root()["item"]._p_oid
    transaction.abort()
    db.pack(days=1)  # as of yesterday: both revisions are newer, both stay
    assert len(db.history(oid, size=10)) == 2
    db.pack()
    assert len(db.history(oid, size=10)) == 1
    db.close()


@pytest.mark.parametrize(
    "oid, size, error, message",
    [
        (ROOT_OID, -1, ValueError, "history size must be an integer >= 1, not -1"),
        (ROOT_OID, 0, ValueError, "history size must be an integer >= 1, not 0"),
        (ROOT_OID, "3", TypeError, "history size must be an integer, not str"),
        (0, 1, TypeError, "oid must be 8 bytes"),
    ],
)
def test_db_history_of_a_bad_size_or_oid_says_so(oid, size, error, message):
    db = atoll.DB(None)
    with pytest.raises(error, match=message):
        db.history(oid, size)
    assert len(db.history(ROOT_OID, 1)) == 1
    db.close()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"cache_size": "big"}, TypeError, "cache_size must be an integer, not str 'big'"),
        ({"cache_size": -1}, ValueError, "cache_size must be an integer >= 0, not -1"),
        ({"cache_size": True}, TypeError, "cache_size must be an integer"),
        ({"pool_size": -1}, ValueError, "pool_size must be an integer >= 0, not -1"),
        ({"pool_size": 2.5}, TypeError, "pool_size must be an integer"),
        ({"cache_size_bytes": -5}, ValueError, "cache_size_bytes must be an integer >= 0"),
        ({"historical_pool_size": -2}, ValueError, "historical_pool_size must be"),
        ({"historical_cache_size": None}, TypeError, "historical_cache_size must be an integer"),
        ({"historical_cache_size_bytes": -1}, ValueError, "historical_cache_size_bytes must be"),
        ({"pool_timeout": -1}, ValueError, "pool_timeout must be a number of seconds >= 0"),
        ({"pool_timeout": "1h"}, TypeError, "pool_timeout must be a number of seconds"),
        ({"historical_timeout": float("nan")}, ValueError, "historical_timeout must be a number of seconds"),
    ],
)
def test_db_with_a_bad_size_or_timeout_refuses_before_opening_anything(tmp_path, kwargs, error, message):
    path = tmp_path / "app.db"
    with pytest.raises(error, match=message):
        atoll.DB(str(path), **kwargs)
    assert not path.exists()  # refused before the storage was opened


@pytest.mark.parametrize(
    "setter, value, error, message",
    [
        ("setPoolSize", -1, ValueError, "pool_size must be an integer >= 0, not -1"),
        ("setCacheSize", "big", TypeError, "cache_size must be an integer, not str 'big'"),
        ("setCacheSizeBytes", -5, ValueError, "cache_size_bytes must be an integer >= 0"),
        ("setHistoricalPoolSize", 1.5, TypeError, "historical_pool_size must be an integer"),
        ("setHistoricalCacheSize", -3, ValueError, "historical_cache_size must be an integer >= 0"),
        ("setHistoricalCacheSizeBytes", None, TypeError, "historical_cache_size_bytes must be an integer"),
        ("setHistoricalTimeout", -1, ValueError, "historical_timeout must be a number of seconds >= 0"),
    ],
)
def test_db_setters_of_a_bad_size_or_timeout_change_nothing(setter, value, error, message):
    db = atoll.DB(None)
    getter = "get" + setter[3:]
    was = getattr(db, getter)()
    with pytest.raises(error, match=message):
        getattr(db, setter)(value)
    assert getattr(db, getter)() == was
    db.close()


@pytest.mark.parametrize(
    "line, message",
    [
        ("cache-size big", "invalid literal for int"),
        ("cache-size -1", "expected an integer >= 0"),
        ("pool-size -1", "expected an integer >= 0"),
        ("cache-size-bytes -5", "expected a byte size >= 0"),
        ("historical-cache-size-bytes -5", "expected a byte size >= 0"),
        ("pool-timeout -5", "expected a time interval >= 0"),
        ("historical-timeout -1m", "expected a time interval >= 0"),
    ],
)
def test_config_with_a_bad_size_or_timeout_names_the_line(line, message):
    text = f"<zodb>\n  <mappingstorage/>\n  {line}\n</zodb>\n"
    with pytest.raises(ZConfig.DataConversionError, match=message) as info:
        atoll.config.databaseFromString(text)
    assert "line 3" in str(info.value)


def test_config_sizes_and_timeouts_in_range_still_open():
    text = (
        "<zodb>\n  <mappingstorage/>\n  cache-size-bytes 5MB\n  pool-timeout 5m\n"
        "  historical-timeout 0\n  pool-size 0\n</zodb>\n"
    )
    db = atoll.config.databaseFromString(text)
    assert db.cache_size_bytes == 5 * 1024 * 1024
    assert db._pool.timeout == 300 and db._historical_timeout == 0
    db.close()
