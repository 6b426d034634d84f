"""atoll.copy: every transaction, with its tid and every revision, between any storages,
ZODB FileStorage included; restartable; refuses what it cannot do."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection import CopyStats, TargetError
from atoll.errors import StorageError
from atoll.progress import ProgressStep
from atoll.storage import MemoryStorage, SQLiteStorage

ZODB = pytest.importorskip("ZODB", reason="ZODB is not installed here: pip install -e '.[test]'")
import ZODB.FileStorage  # noqa: E402


def transactions(end) -> list:
    """Everything a copy must keep: per transaction its tid, metadata and records."""
    if isinstance(end, (str, os.PathLike)) and os.fspath(end).endswith(".fs"):
        from atoll.collection.zodb import FileStorageReader

        reader = FileStorageReader(os.fspath(end))
        try:
            found = list(reader.transactions(None))
        finally:
            reader.close()
    else:
        found = list(end.iterator())
    return [
        (t.tid, t.user, t.description, dict(t.extension), sorted((r.oid, r.data or None) for r in t.records))
        for t in found
    ]


def zodb_history(path: str, rounds: int = 5) -> None:
    """A Data.fs with a history: several revisions, a BTree, metadata, an undo."""
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    conn = db.open()
    root = conn.root()
    root["tree"] = OOBTree()
    root["pages"] = PersistentMapping()
    txn = transaction.get()
    txn.note("setup")
    txn.setUser("ada")
    txn.setExtendedInfo("request", "/setup")
    transaction.commit()
    for i in range(rounds):
        root["tree"][f"k{i}"] = PersistentMapping(i=i)
        root["pages"][i] = PersistentMapping(title=f"page {i}", body="x" * i)
        transaction.get().note(f"round {i}")
        transaction.commit()
    db.undo(db.undoLog(0, 1)[0]["id"])
    transaction.get().note("undo the last round")
    transaction.commit()
    conn.close()
    db.close()


def test_round_trip_filestorage_sqlite_postgresql_filestorage(tmp_path: Path):
    import postgres_support

    source = str(tmp_path / "Data.fs")
    zodb_history(source)
    expected = transactions(source)
    sqlite_path = str(tmp_path / "copy.db")
    steps: list[str] = []
    stats = atoll.copy(source, sqlite_path, progress=steps.append)
    assert isinstance(stats, CopyStats) and stats.transactions == len(expected)
    assert steps and isinstance(steps[-1], ProgressStep) and steps[-1].finished
    sqlite = SQLiteStorage(sqlite_path, read_only=True)
    assert transactions(sqlite) == expected
    pg = postgres_support.make_storage("copy_round_trip")
    atoll.copy(sqlite, pg)
    assert transactions(pg) == expected
    back = str(tmp_path / "back.fs")
    atoll.copy(pg, back)
    assert transactions(back) == expected  # every record of every revision, byte-equal; tids equal
    sqlite.close()
    # An application reads the same objects at the end.
    db = ZODB.DB(ZODB.FileStorage.FileStorage(back, read_only=True))
    conn = db.open()
    assert sorted(conn.root()["tree"].keys()) == [f"k{i}" for i in range(4)]  # the last round was undone
    assert conn.root()["pages"][3]["title"] == "page 3" and 4 not in conn.root()["pages"]
    conn.close()
    db.close()


@pytest.mark.parametrize("into", ["sqlite", "postgresql"])
def test_an_undo_of_several_transactions_comes_in_as_its_last_records(tmp_path: Path, into: str):
    """ZODB's FileStorage writes an object twice in one transaction when one undo
    takes back several transactions that changed it; the copy keeps the last record,
    the state FileStorage loads."""
    import postgres_support

    source = str(tmp_path / "Data.fs")
    db = ZODB.DB(ZODB.FileStorage.FileStorage(source))
    conn = db.open()
    conn.root()["item"] = PersistentMapping(x=0)
    transaction.commit()
    for x in (1, 2):
        conn.root()["item"]["x"] = x
        transaction.commit()
    db.undoMultiple([entry["id"] for entry in db.undoLog(0, 2)])
    transaction.commit()
    oid = conn.root()["item"]._p_oid
    last = db.storage.lastTransaction()
    undo = next(iter(db.storage.iterator(last, last)))
    assert [record.oid for record in undo] == [oid, oid]  # the shape this test is about
    expected, count = db.storage.load(oid)[0], len(list(db.storage.iterator()))
    conn.close()
    db.close()
    destination = SQLiteStorage(tmp_path / "copy.db") if into == "sqlite" else postgres_support.make_storage("copy_undo_multiple")
    try:
        stats = atoll.copy(source, destination)
        assert stats.transactions == count
        view = destination.open_view()
        assert view.load(oid) == (expected, last)
        view.close()
        copied = atoll.DB(destination)
        with copied.transaction() as c:
            assert c.root()["item"]["x"] == 0
    finally:
        destination.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
def test_any_storage_to_any_storage_keeps_everything_and_new_oids_are_fresh(tmp_path: Path, kind: str):
    import postgres_support

    source = atoll.DB(MemoryStorage())
    for i in range(5):
        with source.transaction(note=f"t{i}") as conn:
            conn.root()[i] = PersistentMapping(i=i)
            if i == 3:
                del conn.root()[1]
    makers = {
        "memory": MemoryStorage,
        "sqlite": lambda: SQLiteStorage(tmp_path / "dest.db"),
        "postgresql": lambda: postgres_support.make_storage("copy_any"),
    }
    destination = makers[kind]()
    atoll.copy(source.storage, destination)
    assert transactions(destination) == transactions(source.storage)
    copied = atoll.DB(destination)
    oids = {copied.new_oid() for _ in range(20)}
    with copied.transaction() as conn:
        used = {conn.root()[i]._p_oid for i in (0, 2, 3, 4)}
        assert conn.root()[4]["i"] == 4
    assert not oids & used and all(oid > max(used) for oid in oids)  # never an oid that exists
    copied.close()


def _writer_child(source: str, destination: str, fd: int, direct: bool) -> None:  # pragma: no cover - a child
    import time

    from atoll.collection.copy import _StorageWriter
    from atoll.storage import sqlite_copy

    copy_module = sys.modules["atoll.collection.copy"]  # the package's "copy" is the function
    if direct:  # SQLite to SQLite inside SQLite (SQLiteStorage.restore_from)
        original_batch = sqlite_copy._write_batch

        def slow_batch(storage, writer, source_path, last, high, *rest):  # a kill lands mid-copy
            time.sleep(0.02)
            return original_batch(storage, writer, source_path, last, high, *rest)

        sqlite_copy._write_batch = slow_batch
        sqlite_copy.BATCH_TRANSACTIONS = 7
    else:  # through the iterator and restore_transactions
        original = _StorageWriter.write_batch

        def slow_write(self, records):  # slow enough that a kill lands mid-copy
            time.sleep(0.002 * len(records))
            return original(self, records)

        _StorageWriter.write_batch = slow_write
        copy_module._direct = lambda reader, writer, start: None
        copy_module.BATCH_TRANSACTIONS = 7  # many batches: the kill lands in or between them
    atoll.copy(source, destination, progress=lambda step: os.write(fd, b"%d\n" % step.done))


@pytest.mark.parametrize("direct", [True, False], ids=["inside-sqlite", "through-the-iterator"])
def test_a_copy_killed_and_restarted_equals_an_uninterrupted_one(tmp_path: Path, direct: bool):
    from kill_support import run_until_killed

    source = str(tmp_path / "source.db")
    db = atoll.open(source)
    for i in range(300):
        with db.transaction(note=f"t{i}") as conn:
            conn.root()[i % 17] = PersistentMapping(i=i)
    db.close()
    destination = str(tmp_path / "dest.db")

    def child(fd: int) -> None:
        _writer_child(source, destination, fd, direct)  # reports every few transactions copied
        while True:  # the helper kills us; never stop by ourselves
            pass

    reports = run_until_killed(child, random.Random(7), 0.3)  # killed after a first report
    partial = SQLiteStorage(destination, read_only=True)
    copied_before = len(transactions(partial))
    partial.close()
    assert reports and 0 < copied_before < 301, (reports, copied_before)  # killed mid-copy
    stats = atoll.copy(source, destination)
    assert stats.resumed_after is not None
    assert stats.transactions == 301 - copied_before
    done = SQLiteStorage(destination, read_only=True)
    original = SQLiteStorage(source, read_only=True)
    assert transactions(done) == transactions(original)
    done.close()
    original.close()


def test_copy_refuses_a_destination_that_is_not_empty(tmp_path: Path):
    source, other = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    for path in (source, other):
        db = atoll.open(path)
        with db.transaction() as conn:
            conn.root()["x"] = path
        db.close()
    before = transactions(SQLiteStorage(other, read_only=True))
    with pytest.raises(TargetError, match="is not empty and is not an interrupted copy"):
        atoll.copy(source, other)
    assert transactions(SQLiteStorage(other, read_only=True)) == before


def test_copy_refuses_a_source_that_is_not_a_database(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(StorageError):
        atoll.copy(str(notes), str(tmp_path / "x.db"))
    with pytest.raises(TargetError, match="no database at"):
        atoll.copy(str(tmp_path / "missing.db"), str(tmp_path / "y.db"))
    assert not (tmp_path / "y.db").exists()
    fs = tmp_path / "fake.fs"
    fs.write_text("not a filestorage")
    with pytest.raises(StorageError, match="is not a ZODB FileStorage"):
        atoll.copy(str(fs), str(tmp_path / "z.db"))


def test_copy_says_which_extra_a_filestorage_needs(tmp_path: Path, monkeypatch):
    source = str(tmp_path / "a.db")
    atoll.open(source).close()
    monkeypatch.setitem(sys.modules, "ZODB", None)  # as if ZODB were not installed
    monkeypatch.setitem(sys.modules, "ZODB.FileStorage", None)
    with pytest.raises(StorageError, match=r"pip install 'atoll\[zodb\]'"):
        atoll.copy(source, str(tmp_path / "Data.fs"))


def test_a_zodb_multi_database_comes_in_as_one_collection(tmp_path: Path):
    """Two Data.fs of a ZODB multi-database, with a cross-database reference, become
    two atoll databases of one collection; the reference still resolves."""
    databases: dict = {}
    users = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "users.fs")), database_name="users", databases=databases)
    ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "orders.fs")), database_name="orders", databases=databases)
    conn = users.open()
    ada = PersistentMapping(name="Ada")
    conn.root()["ada"] = ada
    conn.add(ada)
    conn.get_connection("orders").root()["first"] = PersistentMapping(customer=ada)
    transaction.commit()
    conn.close()
    for each in databases.values():
        each.close()

    conf = tmp_path / "app.conf"
    conf.write_text(
        f"<zodb users>\n  <sqlitestorage>\n    path {tmp_path / 'users.db'}\n  </sqlitestorage>\n</zodb>\n"
        f"<zodb orders>\n  <sqlitestorage>\n    path {tmp_path / 'orders.db'}\n  </sqlitestorage>\n</zodb>\n"
    )
    stats = atoll.copy({"users": str(tmp_path / "users.fs"), "orders": str(tmp_path / "orders.fs")}, str(conf))
    assert set(stats) == {"users", "orders"}
    db = atoll.open(str(conf))
    conn = db.open()
    customer = conn.get_connection("orders").root()["first"]["customer"]
    assert customer["name"] == "Ada" and customer._p_jar is conn
    conn.close()
    for each in list(db.databases.values()):
        each.close()


def _history(path: str, commits: int) -> tuple[atoll.DB, float]:
    """A SQLite database of ``commits`` transactions and then one more, a little
    later; the open DB and a POSIX time between the two (a pack there removes the
    root's older revisions)."""
    import time

    from atoll.ids import tid_time

    db = atoll.open(path)
    for i in range(commits):
        with db.transaction() as conn:
            conn.root()["n"] = i
    between = tid_time(db.storage.last_transaction()) + 0.001
    time.sleep(0.01)
    with db.transaction() as conn:
        conn.root()["n"] = "last"
    return db, between


def _packed_source(path: str) -> bytes:
    """A SQLite database whose first revisions a pack removed; the pack tid."""
    db, between = _history(path, 6)
    db.pack(between)
    pack_tid = db.storage.last_pack()
    db.close()
    assert pack_tid != b"\0" * 8
    return pack_tid


@pytest.mark.parametrize("into", ["sqlite", "memory"])
def test_a_copy_of_a_packed_database_refuses_the_undo_its_source_refuses(tmp_path: Path, into: str):
    source = str(tmp_path / "a.db")
    pack_tid = _packed_source(source)
    destination = SQLiteStorage(str(tmp_path / "b.db")) if into == "sqlite" else MemoryStorage()
    atoll.copy(source, destination)
    assert destination.last_pack() == pack_tid  # undo refuses transactions at or before it
    destination.close()


@pytest.mark.parametrize("direct", [True, False], ids=["inside-sqlite", "through-the-iterator"])
def test_a_source_packed_while_it_is_copied_is_refused(tmp_path: Path, monkeypatch, direct: bool):
    from atoll.collection.copy import _StorageWriter
    from atoll.storage import sqlite_copy

    db, middle = _history(str(tmp_path / "a.db"), 20)
    packed: list[bool] = []

    def pack_once() -> None:
        if not packed:
            packed.append(True)
            db.pack(middle)

    if direct:
        original_batch = sqlite_copy._write_batch
        monkeypatch.setattr(sqlite_copy, "BATCH_TRANSACTIONS", 4)
        monkeypatch.setattr(sqlite_copy, "_write_batch", lambda *args: (original_batch(*args), pack_once())[0])
    else:
        original = _StorageWriter.write_batch
        monkeypatch.setattr(sys.modules["atoll.collection.copy"], "BATCH_TRANSACTIONS", 4)
        monkeypatch.setattr(sys.modules["atoll.collection.copy"], "_direct", lambda *args: None)
        monkeypatch.setattr(_StorageWriter, "write_batch", lambda self, batch: (original(self, batch), pack_once())[0])
    with pytest.raises(TargetError, match="was packed while it was copied"):
        atoll.copy(db.storage, str(tmp_path / "b.db"))
    db.close()
