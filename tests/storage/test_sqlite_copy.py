"""SQLiteStorage.restore_from: another SQLite file's transactions copied inside
SQLite (atoll.storage.sqlite_copy), equal to what the iterator and
restore_transactions write."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

import pytest

from atoll.errors import CorruptRecordError, StorageError
from atoll.ids import ROOT_OID, p64, u64
from atoll.storage import sqlite_copy
from atoll.storage.checksum import checksum
from atoll.storage.memory import MemoryStorage
from atoll.storage.sqlite import SQLiteStorage
from test_restore import batch, everything, tids_after, txn


def record(payload: object) -> bytes:
    return pickle.dumps((payload, []))


def source_file(path: Path, keep_history: bool = True, transactions: int = 30) -> SQLiteStorage:
    """A file with the restore tests' four transactions and ``transactions`` more,
    each writing a few objects; returned open read-only."""
    storage = SQLiteStorage(path, keep_history=keep_history)
    storage.restore_transactions(batch(storage))
    more = []
    for i, tid in enumerate(tids_after(storage.last_transaction(), transactions)):
        more.append(txn(tid, {p64(10 + i): record(i), p64(10 + i // 2): record(-i)}, f"user{i}", f"note {i}", i=i))
    storage.restore_transactions(more)
    storage.close()
    return SQLiteStorage(path, keep_history=keep_history, read_only=True)


def copied(source: SQLiteStorage, destination: SQLiteStorage, start: bytes | None = None) -> list[tuple[int, int, int]]:
    batches = destination.restore_from(source, start)
    assert batches is not None, "expected the copy inside SQLite"
    return list(batches)


@pytest.mark.parametrize("keep_history", [True, False], ids=["history", "history-free"])
def test_copies_every_transaction_as_the_iterator_does(tmp_path: Path, keep_history: bool):
    source = source_file(tmp_path / "a.db", keep_history)
    inside = SQLiteStorage(tmp_path / "inside.db", keep_history=keep_history)
    through = SQLiteStorage(tmp_path / "through.db", keep_history=keep_history)
    done = copied(source, inside)
    through.restore_transactions(list(source.iterator()))
    assert everything(inside) == everything(through) == everything(source)
    assert sum(d[0] for d in done) == len(list(source.iterator()))
    assert sum(d[1] for d in done) == sum(len(t.records) for t in source.iterator())
    assert sum(d[2] for d in done) == sum(len(r.data or b"") for t in source.iterator() for r in t.records)
    assert inside.verify() == []
    assert len(inside) == len(source)  # the ended object (an undone creation) stays ended
    assert all(u64(inside.new_oid()) > 40 for _ in range(50))  # past every oid copied
    for storage in (source, inside, through):
        storage.close()


def test_copies_in_batches_and_continues_after_the_last_transaction(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 4)
    source = source_file(tmp_path / "a.db")
    destination = SQLiteStorage(tmp_path / "b.db")
    tids = [t.tid for t in source.iterator()]
    first = destination.restore_from(source)
    assert first is not None
    next(first)  # one batch of 4, then stop (an interrupted copy)
    first.close()
    assert [t.tid for t in destination.iterator()] == tids[:4]
    rest = copied(source, destination, p64(u64(tids[3]) + 1))
    assert len(rest) == (len(tids) - 4 + 3) // 4
    assert everything(destination) == everything(source)
    source.close()
    destination.close()


@pytest.mark.parametrize(
    "damage", ["zeroblob(length(state))", "X'00' || state"], ids=["other-bytes", "not-a-blob"]
)
def test_a_damaged_revision_stops_the_copy_and_nothing_of_its_batch_is_written(tmp_path: Path, damage: str):
    source = source_file(tmp_path / "a.db")
    damaged_tid = u64(list(source.iterator())[-1].tid)
    source.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute(f"UPDATE object_state SET state = {damage} WHERE zoid = 39 AND tid = ?", (damaged_tid,))
    conn.close()
    source = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    with pytest.raises(CorruptRecordError) as raised:
        copied(source, destination)
    assert raised.value.oid == p64(39) and raised.value.tid == p64(damaged_tid)
    assert list(destination.iterator()) == []  # one batch: all or nothing
    source.close()
    destination.close()


def test_a_revision_written_before_checksums_gets_one(tmp_path: Path):
    source = source_file(tmp_path / "a.db")
    source.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE object_state SET checksum = NULL WHERE zoid = 7")
    conn.close()
    source = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    copied(source, destination)
    source.close()
    destination.close()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        rows = conn.execute("SELECT zoid, tid, state, checksum FROM object_state WHERE zoid = 7").fetchall()
    conn.close()
    assert len(rows) == 2 and all(stored == checksum(zoid, tid, state) for zoid, tid, state, stored in rows)


def test_a_prepared_part_that_did_not_commit_is_not_copied(tmp_path: Path):
    source = source_file(tmp_path / "a.db")
    last = u64(source.last_transaction())
    source.close()
    pending = last + 1000
    with sqlite3.connect(tmp_path / "a.db") as conn:  # what a collection member's prepare leaves
        conn.execute(
            "INSERT INTO object_state (zoid, tid, state, checksum) VALUES (5, ?, ?, ?)",
            (pending, record("pending"), checksum(5, pending, record("pending"))),
        )
        conn.execute(
            "INSERT INTO commit_pending VALUES (?, 'x', 'sqlite:/nowhere', ?, '', '', X'', ?)",
            (pending, time.time(), p64(5)),
        )
    conn.close()
    source = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    copied(source, destination)
    assert everything(destination) == everything(source)
    assert all(r.oid != p64(5) for t in destination.iterator() for r in t.records)
    source.close()
    destination.close()


def test_a_commit_to_the_destination_during_the_copy_stops_it(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 4)
    source = source_file(tmp_path / "a.db")
    destination = SQLiteStorage(tmp_path / "b.db")
    batches = destination.restore_from(source)
    assert batches is not None
    next(batches)
    later = tids_after(p64(u64(source.last_transaction()) + 10**9), 1)[0]
    destination.restore_transactions([txn(later, {p64(3): record("someone else")})])
    with pytest.raises(StorageError, match="received a commit during the copy"):
        next(batches)
    source.close()
    destination.close()


def test_other_sources_go_through_the_iterator(tmp_path: Path):
    history = source_file(tmp_path / "a.db")
    free = source_file(tmp_path / "free.db", keep_history=False)
    destination = SQLiteStorage(tmp_path / "b.db")
    assert destination.restore_from(MemoryStorage()) is None
    assert destination.restore_from(free) is None  # history modes differ
    free_destination = SQLiteStorage(tmp_path / "c.db", keep_history=False)
    free_destination.restore_transactions([txn(tids_after(history.last_transaction(), 1)[0], {ROOT_OID: b""})])
    assert free_destination.restore_from(free) is None  # history-free and not empty: replaced revisions go
    for storage in (history, free, destination, free_destination):
        storage.close()
