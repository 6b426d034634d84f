"""Space comes back: a packed SQLite file shrinks and get_size says so."""

from __future__ import annotations

import os
import sqlite3

import transaction

import atoll
import atoll.collection
from atoll.storage.sqlite import SQLiteStorage
from helpers import Item


def on_disk(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def fill_and_drop(db: atoll.DB) -> None:
    with db.transaction() as conn:
        conn.root()["items"] = [Item("x" * 1000) for _ in range(2000)]
    with db.transaction() as conn:
        del conn.root()["items"]


def test_a_packed_sqlite_file_shrinks(tmp_path):
    path = str(tmp_path / "app.db")
    db = atoll.DB(SQLiteStorage(path))
    fill_and_drop(db)
    before = db.storage.get_size()
    assert before == on_disk(path) and before > 2_000_000
    stats = db.pack()
    assert stats.objects_removed == 2000
    assert stats.size_before == before
    assert stats.size_after == db.storage.get_size() == on_disk(path) < 200_000
    db.close()


def test_vacuum_turns_an_older_file_incremental(tmp_path):
    path = str(tmp_path / "old.db")
    SQLiteStorage(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA auto_vacuum = NONE")
    raw.execute("VACUUM")  # as files made before incremental vacuum were
    assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    raw.close()
    databases: dict = {}
    db = atoll.DB(SQLiteStorage(path), database_name="old", databases=databases)
    fill_and_drop(db)
    from atoll.collection.marking import pack_storage
    from atoll.ids import tid_from_time
    import time

    pack_storage(db.storage, tid_from_time(time.time()), vacuum=False)
    lines: list[str] = []
    space = atoll.collection.vacuum(databases, progress=lines.append)
    assert space["old"].after < space["old"].before // 5
    assert space["old"].after == on_disk(path)
    assert lines[-1].finished and "vacuumed old" in lines[-1]
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    raw.close()
    with db.transaction() as conn:
        assert "items" not in conn.root()
    db.close()
