"""Storage.restore_transactions, on every backend (the ``storage`` fixture): what a
copy writes, many transactions at a time, each with its own tid and metadata."""

from __future__ import annotations

import pickle
from typing import Iterator

import pytest

from atoll.errors import POSKeyError, StorageError
from atoll.ids import ROOT_OID, new_tid, p64, u64, z64
from atoll.storage.base import DataRecord, Storage, TransactionMeta, TransactionRecord
from storage_helpers import commit


def record(payload: object) -> bytes:
    return pickle.dumps((payload, []))


def txn(tid: bytes, writes: dict[bytes, bytes | None], user: str = "", note: str = "", **extension) -> TransactionRecord:
    return TransactionRecord(tid, user, note, extension, [DataRecord(oid, tid, data) for oid, data in writes.items()])


def tids_after(last: bytes, count: int) -> list[bytes]:
    tids = []
    for _ in range(count):
        last = new_tid(last)
        tids.append(last)
    return tids


def everything(storage: Storage) -> list[tuple]:
    return [
        (t.tid, t.user, t.description, dict(t.extension), sorted((r.oid, r.data) for r in t.records))
        for t in storage.iterator()
    ]


def expected(transactions: list[TransactionRecord]) -> list[tuple]:
    return [
        (t.tid, t.user, t.description, dict(t.extension), sorted((r.oid, r.data) for r in t.records))
        for t in transactions
    ]


def batch(storage: Storage) -> list[TransactionRecord]:
    """Four transactions: the root, two objects, a new revision of one, the end of the other."""
    t1, t2, t3, t4 = tids_after(storage.last_transaction(), 4)
    return [
        txn(t1, {ROOT_OID: record("root")}, "ada", "created", request="/"),
        txn(t2, {p64(7): record("seven"), p64(900): record("far")}, note="two objects"),
        txn(t3, {p64(7): record("seven, again"), ROOT_OID: record("root 2")}),
        txn(t4, {p64(900): None}, note="undo of a creation"),
    ]


def test_restore_keeps_tids_metadata_and_every_revision(storage):
    given = batch(storage)
    written = storage.restore_transactions(given)
    assert written == sum(len(r.data or b"") for t in given for r in t.records)
    assert storage.last_transaction() == given[-1].tid
    if storage.keep_history:
        assert everything(storage) == expected(given)
        assert [h.tid for h in storage.history(p64(7), 5)] == [given[2].tid, given[1].tid]
    view = storage.open_view()
    assert view.load(p64(7)) == (record("seven, again"), given[2].tid)
    assert view.load(ROOT_OID) == (record("root 2"), given[2].tid)
    with pytest.raises(POSKeyError):
        view.load(p64(900))  # ended
    assert len(storage) == 2
    if not storage.keep_history:
        assert [h.tid for h in storage.history(p64(7), 5)] == [given[2].tid]
    view.close()


def test_restore_moves_the_oid_counter_past_every_oid(storage):
    storage.restore_transactions(batch(storage))
    handed = [storage.new_oid() for _ in range(50)]
    assert all(u64(oid) > 900 for oid in handed)


def test_restore_after_commits_and_then_commits_again(storage):
    """Restored transactions follow ordinary commits, and views see them on poll."""
    view = storage.open_view()
    first = commit(view, {ROOT_OID: (z64, record("root"))})
    view.poll()
    assert view.load(ROOT_OID) == (record("root"), first)  # held by the record cache, if any
    t1, t2 = tids_after(first, 2)
    storage.restore_transactions([txn(t1, {ROOT_OID: record("restored")}), txn(t2, {p64(3): record("three")})])
    assert view.poll() == {ROOT_OID, p64(3)}
    assert view.load(ROOT_OID) == (record("restored"), t1)
    later = commit(view, {ROOT_OID: (t1, record("after"))}, TransactionMeta(description="after"))
    view.poll()
    assert later > t2 and view.load(ROOT_OID) == (record("after"), later)
    view.close()


def test_restore_refuses_a_tid_that_is_not_later(storage):
    view = storage.open_view()
    last = commit(view, {ROOT_OID: (z64, record("root"))})
    view.close()
    with pytest.raises(StorageError, match="tids only increase"):
        storage.restore_transactions([txn(last, {p64(5): record("five")})])
    (newer,) = tids_after(last, 1)
    with pytest.raises(StorageError, match="tids only increase"):
        storage.restore_transactions([txn(newer, {p64(5): record("five")}), txn(newer, {p64(6): record("six")})])
    found = [t.tid for t in storage.iterator()]
    assert found in ([last], [last, newer])  # whole transactions only: a leading part
    if type(storage).__name__ in ("SQLiteStorage", "PostgreSQLStorage"):  # the batch is one transaction
        assert found == [last]
    assert storage.last_transaction() == found[-1]


def test_an_interrupted_restore_leaves_whole_transactions_only(storage):
    given = batch(storage)

    def interrupted() -> Iterator[TransactionRecord]:
        yield from given[:3]
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="the source failed"):
        storage.restore_transactions(interrupted())
    last = storage.last_transaction()
    assert last in [z64] + [t.tid for t in given[:3]]  # a leading part of the batch...
    done = [t.tid for t in given].index(last) + 1 if last != z64 else 0
    if storage.keep_history:
        assert everything(storage) == expected(given[:done])  # ...each transaction whole
    if type(storage).__name__ in ("SQLiteStorage", "PostgreSQLStorage"):  # one transaction per batch
        assert done == 0
    # The storage goes on: the same batch again (from where it stopped) completes it.
    storage.restore_transactions(given[done:])
    assert storage.last_transaction() == given[-1].tid
    view = storage.open_view()
    assert view.load(p64(7)) == (record("seven, again"), given[2].tid)
    view.close()


def test_sqlite_restores_batches_of_any_size_with_the_same_two_statements(tmp_path):
    """A statement text per batch length would fill sqlite3's statement cache with
    large compiled statements: memory that grew with the history copied."""
    from atoll.storage import sqlite_restore, sqlite_sql
    from atoll.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(tmp_path / "r.db")
    sqlite_sql.insert_revisions.cache_clear()
    oid = 1
    for size in (3, 7, sqlite_restore.RESTORE_ROWS_PER_INSERT + 11, 2 * sqlite_restore.RESTORE_ROWS_PER_INSERT + 5):
        (tid,) = tids_after(storage.last_transaction(), 1)
        storage.restore_transactions([txn(tid, {p64(oid + i): record(i) for i in range(size)})])
        oid += size
    assert sqlite_sql.insert_revisions.cache_info().currsize == 2
    assert len(list(storage.iterator())) == 4 and len(storage) == oid - 1
    storage.close()


def test_sqlite_restore_stopped_by_a_constraint_halfway_writes_nothing_and_goes_on(tmp_path):
    """A revision that breaks a constraint in the middle of a multi-row INSERT (its
    INSERT OR ROLLBACK ends the whole write transaction): the restore fails with a
    StorageError, nothing of its batch is there, and the storage takes the next."""
    import sqlite3

    from atoll.storage import sqlite_restore
    from atoll.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(tmp_path / "r.db")
    t1, t2, t3 = tids_after(storage.last_transaction(), 3)
    storage.restore_transactions([txn(t1, {ROOT_OID: record("root")})])
    # A stray revision (no transaction names it) where the batch will write one.
    stray = sqlite3.connect(tmp_path / "r.db")
    with stray:
        stray.execute("INSERT INTO object_state (zoid, tid, state) VALUES (100, ?, x'00')", (u64(t3),))
    rows = {p64(n): record(n) for n in range(1, sqlite_restore.RESTORE_ROWS_PER_INSERT + 50)}
    broken = [txn(t2, {p64(5000): record("before")}), txn(t3, rows)]
    with pytest.raises(StorageError, match="UNIQUE constraint failed"):
        storage.restore_transactions(broken)
    assert storage.last_transaction() == t1 and [t.tid for t in storage.iterator()] == [t1]
    assert stray.execute("SELECT count(*) FROM object_state").fetchone()[0] == 2  # the root and the stray
    with stray:
        stray.execute("DELETE FROM object_state WHERE zoid = 100")
    stray.close()
    storage.restore_transactions(broken)
    assert storage.last_transaction() == t3 and len(storage) == 2 + len(rows)
    view = storage.open_view()
    assert view.load(p64(100)) == (record(100), t3)
    view.close()
    storage.close()


def test_an_oid_listed_twice_in_a_transaction_keeps_its_last_record(storage):
    """As ZODB's FileStorage writes for an undo of several transactions that changed
    one object: the last record is the revision."""
    (tid,) = tids_after(storage.last_transaction(), 1)
    records = [DataRecord(p64(3), tid, record("first")), DataRecord(ROOT_OID, tid, record("root")),
               DataRecord(p64(3), tid, record("last"))]
    storage.restore_transactions([TransactionRecord(tid, "", "", {}, records)])
    view = storage.open_view()
    assert view.load(p64(3)) == (record("last"), tid)
    view.close()
    assert [sorted(r.oid for r in t.records) for t in storage.iterator()] == [[ROOT_OID, p64(3)]]


def test_note_pack_moves_last_pack_forward_only(storage):
    first, later = tids_after(storage.last_transaction(), 2)  # any tids: nothing needs to exist
    assert storage.last_pack() == z64
    storage.note_pack(later)
    assert storage.last_pack() == later
    storage.note_pack(first)
    assert storage.last_pack() == later
