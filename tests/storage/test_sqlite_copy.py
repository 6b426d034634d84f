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
    for storage in (history, free, destination):
        storage.close()


def test_a_history_free_copy_continues_and_drops_what_the_source_replaced(tmp_path: Path, monkeypatch):
    from storage_helpers import commit as commit_through

    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 2)
    source = SQLiteStorage(tmp_path / "a.db", keep_history=False)
    view = source.open_view()
    for i in range(6):
        commit_through(view, {p64(i + 1): (b"\0" * 8, record(i))})
    reading = SQLiteStorage(tmp_path / "a.db", keep_history=False, read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db", keep_history=False)
    first = destination.restore_from(reading)
    assert first is not None
    next(first)  # an interrupted copy: two transactions
    first.close()
    view.release()
    view = source.open_view()
    replaced = commit_through(view, {p64(1): (view.load(p64(1))[1], record("one, again"))})
    view.release()
    rest = destination.restore_from(reading, p64(u64(destination.last_transaction()) + 1))
    assert rest is not None
    list(rest)
    assert [h.tid for h in destination.history(p64(1), 5)] == [replaced]
    assert len(destination) == 6 and destination.verify() == []
    for storage in (source, reading, destination):
        storage.close()


def test_a_source_packed_during_the_copy_never_gives_another_revision(tmp_path: Path, monkeypatch):
    """A pack may free the largest row id for a new row: the listed id alone would
    then copy another object's newer revision."""
    from atoll.collection.marking import pack_storages
    from storage_helpers import commit as commit_through

    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 2)
    source = SQLiteStorage(tmp_path / "a.db")
    view = source.open_view()
    serial = b"\0" * 8
    for i in range(5):
        serial = commit_through(view, {ROOT_OID: (serial, record(f"root {i}"))})
    unreachable = commit_through(view, {p64(5): (b"\0" * 8, record("unreachable"))})  # the largest row id
    view.release()
    reading = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    batches = destination.restore_from(reading)
    assert batches is not None
    next(batches)
    pack_storages({"main": source}, unreachable, collect=True)
    view = source.open_view()
    commit_through(view, {p64(6): (b"\0" * 8, record("new object"))})  # may reuse the freed row id
    view.release()
    list(batches)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        late = conn.execute("SELECT count(*) FROM object_state WHERE tid > (SELECT max(tid) FROM transactions)")
        assert late.fetchone()[0] == 0
    conn.close()
    assert destination.verify() == []
    assert destination.restore_from(reading, p64(u64(destination.last_transaction()) + 1)) is not None
    for storage in (source, reading, destination):
        storage.close()


def test_a_history_free_source_written_during_the_copy_is_copied_to_its_end(tmp_path: Path, monkeypatch):
    """A revision replaced (deleted) before its batch runs comes with the transaction
    that replaced it, in a later round."""
    from storage_helpers import commit as commit_through

    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 2)
    source = SQLiteStorage(tmp_path / "a.db", keep_history=False)
    view = source.open_view()
    for i in range(6):
        commit_through(view, {p64(i + 1): (b"\0" * 8, record(i))})
    view.release()
    reading = SQLiteStorage(tmp_path / "a.db", keep_history=False, read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db", keep_history=False)
    batches = destination.restore_from(reading)
    assert batches is not None
    next(batches)
    view = source.open_view()  # oid 1 was copied already, oid 5 not yet
    replaced = commit_through(
        view, {oid: (view.load(oid)[1], record(f"{u64(oid)}, again")) for oid in (p64(1), p64(5))}
    )
    view.release()
    list(batches)
    assert destination.last_transaction() == replaced
    for oid in (p64(1), p64(5)):
        assert destination.open_view().load(oid) == (record(f"{u64(oid)}, again"), replaced)
        assert [h.tid for h in destination.history(oid, 5)] == [replaced]  # history-free: one revision
    assert len(destination) == len(reading) == 6
    assert everything(destination) == everything(reading)
    for storage in (source, reading, destination):
        storage.close()


def test_an_interrupt_during_the_copy_is_raised_as_it_is(tmp_path: Path, monkeypatch):
    """SQLite reports whatever its SQL function raises as an error of its own."""
    source = source_file(tmp_path / "a.db")
    destination = SQLiteStorage(tmp_path / "b.db")
    calls, original = [], sqlite_copy._crc32

    def interrupted(data: bytes, seed: int) -> int:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(data, seed)

    monkeypatch.setattr(sqlite_copy, "_crc32", interrupted)
    with pytest.raises(KeyboardInterrupt):
        copied(source, destination)
    assert list(destination.iterator()) == []  # the batch rolled back
    monkeypatch.undo()
    copied(source, destination)  # and the copy can run again
    assert everything(destination) == everything(source)
    source.close()
    destination.close()


@pytest.mark.parametrize("direct", [True, False], ids=["inside-sqlite", "restore_transactions"])
def test_the_log_stays_bounded_during_a_long_copy(tmp_path: Path, monkeypatch, direct: bool):
    """A copy's batches finish the background checkpoint now and then, so the -wal
    file does not grow as large as everything copied."""
    from atoll.storage import sqlite_checkpoint

    monkeypatch.setattr(sqlite_checkpoint, "BULK_FINISH_BYTES", 256 << 10)
    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 10)
    source = SQLiteStorage(tmp_path / "a.db")
    payload = b"x" * 20_000
    given = []
    for i, tid in enumerate(tids_after(source.last_transaction(), 300)):
        given.append(txn(tid, {p64(1 + i % 50): payload + bytes([i % 256])}))
    for at in range(0, 300, 10):
        source.restore_transactions(given[at : at + 10])
    source.close()
    reading = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    destination._checkpointer._every = 128 << 10
    wal, peak = str(tmp_path / "b.db-wal"), 0
    if direct:
        for _ in copied_batches(reading, destination):
            peak = max(peak, Path(wal).stat().st_size)
    else:
        records = list(reading.iterator())
        for at in range(0, len(records), 10):
            destination.restore_transactions(records[at : at + 10])
            peak = max(peak, Path(wal).stat().st_size)
    assert everything(destination) == everything(reading)
    assert peak < 6_000_000 / 2, peak  # 6 MB copied
    reading.close()
    destination.close()


def copied_batches(source: SQLiteStorage, destination: SQLiteStorage):
    batches = destination.restore_from(source)
    assert batches is not None
    return batches


def test_a_destination_that_already_holds_later_transactions_is_refused_before_anything(tmp_path: Path):
    source = source_file(tmp_path / "a.db")
    destination = SQLiteStorage(tmp_path / "b.db")
    later = tids_after(source.last_transaction(), 1)[0]
    destination.restore_transactions([txn(later, {p64(3): record("already here")})])
    batches = destination.restore_from(source)
    assert batches is not None
    with pytest.raises(StorageError, match="holds transactions up to .* copy into an empty database"):
        next(batches)
    assert [t.tid for t in destination.iterator()] == [later]
    source.close()
    destination.close()


def test_the_copys_checkpoints_leave_a_live_source_alone(tmp_path: Path, monkeypatch, caplog):
    """A checkpoint without a schema name would also try the attached read-only
    source, whose log holds frames while another storage writes it."""
    from atoll.storage import sqlite_checkpoint
    from storage_helpers import commit as commit_through

    monkeypatch.setattr(sqlite_checkpoint, "BULK_FINISH_BYTES", 100_000)
    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 5)
    source = SQLiteStorage(tmp_path / "a.db")  # stays open, its log not checkpointed: a live source
    view = source.open_view()
    serials: dict[bytes, bytes] = {}
    for i in range(60):
        oid = p64(1 + i % 7)
        serials[oid] = commit_through(view, {oid: (serials.get(oid, b"\0" * 8), record(i) * 500)})
    view.release()
    assert (tmp_path / "a.db-wal").stat().st_size > 0
    reading = SQLiteStorage(tmp_path / "a.db", read_only=True)
    destination = SQLiteStorage(tmp_path / "b.db")
    with caplog.at_level("WARNING", logger="atoll.storage.sqlite_checkpoint"):
        copied(reading, destination)
    assert not [r for r in caplog.records if "checkpoint" in r.getMessage()]
    assert everything(destination) == everything(reading)
    for storage in (source, reading, destination):
        storage.close()


def test_an_interrupt_while_the_copy_sets_up_leaves_nothing_attached(tmp_path: Path, monkeypatch):
    source = source_file(tmp_path / "a.db")
    destination = SQLiteStorage(tmp_path / "b.db")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_copy, "_checker", interrupted)  # runs after the ATTACH
    with pytest.raises(KeyboardInterrupt):
        copied(source, destination)
    monkeypatch.undo()
    copied(source, destination)  # not "database atoll_copy_source is already in use"
    assert everything(destination) == everything(source)
    source.close()
    destination.close()


def test_new_oid_beside_a_copy_neither_waits_on_it_nor_returns_a_copied_oid_after_it(tmp_path: Path, monkeypatch):
    """The copy gives this process's oid block up while it holds the commit lock;
    new_oid() takes its oid lock and then the commit lock to reserve a block, so
    the give-up must not wait for the oid lock (it would, for commit_lock_timeout)."""
    import threading

    monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 3)
    source = source_file(tmp_path / "a.db", transactions=120)
    destination = SQLiteStorage(tmp_path / "b.db", commit_lock_timeout=5)
    destination.new_oid()  # this process holds a block: oids 1 to 32, which the copy writes
    stop, handed = threading.Event(), []

    def take_oids() -> None:
        while not stop.is_set():
            handed.append(destination.new_oid())

    taker = threading.Thread(target=take_oids)
    taker.start()
    started = time.monotonic()
    try:
        copied(source, destination)
    finally:
        stop.set()
        taker.join()
    assert time.monotonic() - started < 4  # no lock wait ran out
    stored = {r.oid for t in destination.iterator() for r in t.records}
    after = [destination.new_oid() for _ in range(100)]
    assert not stored & set(after) and min(after) > max(stored)
    source.close()
    destination.close()


@pytest.mark.parametrize("direct", [True, False], ids=["inside-sqlite", "restore_transactions"])
def test_another_process_whose_oid_block_a_copy_wrote_into_never_replaces_a_copied_object(
    tmp_path: Path, direct: bool
):
    """It took its block before the copy and was not told; its first commit of a new
    object with such an oid is refused, and the oids it takes after come from a new
    block."""
    from atoll.errors import ConflictError
    from storage_helpers import commit as commit_through

    source = source_file(tmp_path / "a.db")
    other = SQLiteStorage(tmp_path / "b.db")  # "another process": its own instance of the file
    other.new_oid()  # its block: oids 1 to 32, which the copy is about to write
    copying = SQLiteStorage(tmp_path / "b.db")
    if direct:
        copied(source, copying)
    else:
        copying.restore_transactions(list(source.iterator()))
    stored = {r.oid for t in copying.iterator() for r in t.records}
    clash = next(oid for oid in iter(other.new_oid, None) if oid in stored)  # from the stale block
    view = other.open_view()  # its snapshot already holds the copy: its poll reports nothing
    before = view.load(clash)
    with pytest.raises(ConflictError):
        commit_through(view, {clash: (b"\0" * 8, record("a new object"))})
    view.release()
    fresh = other.new_oid()
    assert fresh not in stored and u64(fresh) > max(u64(oid) for oid in stored)
    view = other.open_view()
    commit_through(view, {fresh: (b"\0" * 8, record("a new object"))})
    assert view.load(clash) == before  # the copied object is intact
    view.release()
    for storage in (source, other, copying):
        storage.close()


def test_an_oid_taken_before_the_copy_is_checked_after_another_commit_noticed_it(tmp_path: Path):
    """One transaction of the process notices the copy (and gives the block up);
    another, which took its oid from that block before, must still be checked."""
    from atoll.errors import ConflictError
    from storage_helpers import commit as commit_through

    source = source_file(tmp_path / "a.db")
    other = SQLiteStorage(tmp_path / "b.db")
    early = [other.new_oid() for _ in range(12)]  # from its first block, before the copy
    copying = SQLiteStorage(tmp_path / "b.db")
    copied(source, copying)
    stored = {r.oid for t in copying.iterator() for r in t.records}
    clash = next(oid for oid in early if oid in stored)
    first = other.open_view()  # notices the copy at its commit, which creates nothing
    commit_through(first, {p64(7): (first.load(p64(7))[1], record("seven, changed"))})
    first.release()
    assert u64(other.new_oid()) > max(u64(oid) for oid in stored)  # the block was given up
    second = other.open_view()
    with pytest.raises(ConflictError):
        commit_through(second, {clash: (b"\0" * 8, record("would replace a copied object"))})
    assert second.load(clash)[0] != record("would replace a copied object")
    second.release()
    for storage in (source, other, copying):
        storage.close()
