"""WAL checkpoints run in a background thread, never inside a commit."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from atoll.ids import p64
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage
from atoll.storage.sqlite_checkpoint import CHECKPOINT_BYTES, Checkpointer
from storage_helpers import commit


def wal_frames(path: Path) -> tuple[int, int]:
    """(frames in the log, frames checkpointed), from a passive checkpoint of nothing new."""
    conn = sqlite3.connect(path)
    try:
        _, logged, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return logged, done
    finally:
        conn.close()


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def write_bytes(storage: SQLiteStorage, total: int, record: int = 4000) -> None:
    view = storage.open_view()
    writes = {}
    for _ in range(total // record + 1):
        writes[storage.new_oid()] = (p64(0), os.urandom(record))
    commit(view, writes, TransactionMeta())
    view.release()


def test_the_writer_never_checkpoints_by_itself(tmp_path):
    storage = SQLiteStorage(tmp_path / "app.db")
    try:
        assert storage._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    finally:
        storage.close()


def test_small_commits_start_no_checkpoint_thread(tmp_path):
    storage = SQLiteStorage(tmp_path / "app.db")
    try:
        write_bytes(storage, 10_000)
        assert storage._checkpointer._thread is None
    finally:
        storage.close()


def test_enough_committed_bytes_checkpoint_the_log_in_the_background(tmp_path):
    path = tmp_path / "app.db"
    storage = SQLiteStorage(path)
    try:
        write_bytes(storage, CHECKPOINT_BYTES + 100_000)
        assert wait_for(lambda: storage._checkpointer.checkpoints >= 1)
        thread = storage._checkpointer._thread
        logged, done = wal_frames(path)
        assert logged > 0 and done == logged  # every frame is in the database file
    finally:
        storage.close()
    assert thread is not None and not thread.is_alive()


def test_a_failed_checkpoint_is_logged_and_the_next_request_tries_again(tmp_path, caplog):
    attempts = []

    def broken() -> sqlite3.Connection:
        attempts.append(1)
        raise sqlite3.OperationalError("no such file")

    checkpointer = Checkpointer(broken, every_bytes=10)
    checkpointer.wrote(100)
    assert wait_for(lambda: len(attempts) == 1 and checkpointer._thread is None)
    assert "background WAL checkpoint stopped: no such file" in caplog.text
    checkpointer.wrote(100)
    assert wait_for(lambda: len(attempts) == 2 and checkpointer._thread is None)
    checkpointer.stop()


def test_close_stops_the_thread_and_the_data_is_all_there(tmp_path):
    path = tmp_path / "app.db"
    storage = SQLiteStorage(path)
    write_bytes(storage, CHECKPOINT_BYTES * 2)
    storage.close()
    reopened = SQLiteStorage(path)
    try:
        assert len(reopened) >= (CHECKPOINT_BYTES * 2) // 4000
    finally:
        reopened.close()


def test_the_log_starts_over_under_a_steady_stream_of_small_commits(tmp_path):
    # Commits keep landing while the background run copies, so it never ends with
    # every frame copied by itself; without the committer finishing each run, the
    # log grew by every commit's pages (13 KB here) for as long as commits came.
    import transaction
    from persistent.mapping import PersistentMapping

    import atoll

    path = tmp_path / "app.db"
    storage = SQLiteStorage(path)
    storage._checkpointer = Checkpointer(storage._connect_writer, every_bytes=64 << 10)
    db = atoll.DB(storage)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    try:
        conn.root()["counter"] = counter = PersistentMapping(n=0)
        manager.commit()
        largest = 0
        for i in range(1000):
            counter._p_deactivate()
            counter["n"] = counter["n"] + 1  # a load: the view reads inside the transaction
            manager.commit()
            largest = max(largest, os.path.getsize(f"{path}-wal"))
        assert storage._checkpointer.checkpoints >= 5
        # Bounded by what is logged between two runs (about 10 commits here), not by
        # the number of commits (1,000 commits log 13 MB).
        assert largest < 8 * (64 << 10), largest
    finally:
        conn.close()
        db.close()
