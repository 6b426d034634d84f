"""SQLiteStorage beyond the shared contract: the file, bad input, modes, several
instances on one file. (Several processes: test_sqlite_processes.py; crashes:
test_sqlite_crash.py.)"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from atoll.collection.marking import pack_storage
from atoll.errors import ConflictError, POSKeyError, ReadConflictError, ReadOnlyError, StorageError
from atoll.ids import ROOT_OID, u64, z64
from atoll.storage import sqlite_sql as sql
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage
from storage_helpers import commit


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# -- the file ---------------------------------------------------------------------------


def test_new_file_is_a_versioned_wal_database(path):
    SQLiteStorage(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == sql.APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM atoll_meta"))
    assert meta["application"] == "atoll" and meta["schema_version"] == sql.SCHEMA_VERSION
    conn.close()


def test_data_survives_reopen(path):
    storage = SQLiteStorage(path)
    oid = storage.new_oid()
    tid = commit(storage.open_view(), {ROOT_OID: (z64, b"root"), oid: (z64, b"one")})
    storage.close()
    storage = SQLiteStorage(str(path))
    assert storage.last_transaction() == tid
    assert storage.open_view().load_many([ROOT_OID, oid]) == {ROOT_OID: (b"root", tid), oid: (b"one", tid)}
    assert len(storage) == 2
    storage.close()


def test_oids_are_not_reused_after_reopen(path):
    storage = SQLiteStorage(path)
    first = [storage.new_oid() for _ in range(40)]
    storage.close()
    storage = SQLiteStorage(path)
    assert min(u64(storage.new_oid()) for _ in range(40)) > max(u64(oid) for oid in first)
    storage.close()


def test_an_empty_file_becomes_a_database(path):
    path.write_bytes(b"")
    storage = SQLiteStorage(path)
    assert storage.last_transaction() == z64
    storage.close()


def test_sort_key_is_the_same_for_two_instances(path, tmp_path, monkeypatch):
    a = SQLiteStorage(path)
    monkeypatch.chdir(tmp_path)
    b = SQLiteStorage("app.db")
    assert a.sort_key() == b.sort_key()
    assert a.sort_key() != SQLiteStorage(tmp_path / "other.db").sort_key()
    a.close()
    b.close()


def test_get_size_grows(path):
    storage = SQLiteStorage(path)
    before = storage.get_size()
    commit(storage.open_view(), {storage.new_oid(): (z64, os.urandom(100_000))})
    assert storage.get_size() >= before + 100_000
    storage.close()


# -- bad input: one clear error, nothing written ------------------------------------------


def test_refuses_a_file_that_is_not_a_database(path):
    path.write_bytes(b"hello, this is a text file, not a database\n" * 100)
    before = files_in(path.parent)
    with pytest.raises(StorageError, match=f"{path} is not an SQLite database"):
        SQLiteStorage(path)
    assert files_in(path.parent) == before


def test_refuses_another_applications_database(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'ada')")
    conn.commit()
    conn.close()
    before = files_in(path.parent)
    with pytest.raises(StorageError, match="another application"):
        SQLiteStorage(path)
    assert files_in(path.parent) == before


def test_refuses_a_database_with_another_application_id(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    conn.close()
    before = files_in(path.parent)
    with pytest.raises(StorageError, match="another application.*0x4d2"):
        SQLiteStorage(path)
    assert files_in(path.parent) == before


def test_refuses_a_newer_schema_version(path):
    SQLiteStorage(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE atoll_meta SET value = ? WHERE key = 'schema_version'", (sql.SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = files_in(path.parent)
    with pytest.raises(StorageError, match=f"schema version {sql.SCHEMA_VERSION + 1}, newer"):
        SQLiteStorage(path)
    assert files_in(path.parent) == before


def test_refuses_a_read_only_file_for_writing(path):
    SQLiteStorage(path).close()
    os.chmod(path, 0o444)
    try:
        with pytest.raises(StorageError, match=f"{path} is read-only; open it with read_only=True"):
            SQLiteStorage(path)
        SQLiteStorage(path, read_only=True).close()
    finally:
        os.chmod(path, 0o644)


def test_refuses_a_directory(tmp_path):
    with pytest.raises(StorageError, match="is a directory"):
        SQLiteStorage(tmp_path)


def test_refuses_a_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "app.db"
    with pytest.raises(StorageError, match=f"folder {tmp_path / 'no' / 'such'} does not exist"):
        SQLiteStorage(target)
    assert not (tmp_path / "no").exists()


def test_read_only_never_creates(path):
    with pytest.raises(StorageError, match="does not exist"):
        SQLiteStorage(path, read_only=True)
    assert not path.exists()


def test_refuses_the_other_history_mode(path):
    SQLiteStorage(path, keep_history=False).close()
    with pytest.raises(StorageError, match="keep_history=False"):
        SQLiteStorage(path)


def test_refuses_an_unknown_durability_mode(path):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStorage(path, synchronous="off")  # type: ignore[arg-type]
    assert not path.exists()


# -- modes ----------------------------------------------------------------------------


def test_read_only_refuses_writes(path):
    storage = SQLiteStorage(path)
    tid = commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
    storage.close()
    storage = SQLiteStorage(path, read_only=True)
    assert storage.read_only
    view = storage.open_view()
    assert view.load(ROOT_OID) == (b"root", tid)
    with pytest.raises(ReadOnlyError):
        view.tpc_begin(TransactionMeta())
    with pytest.raises(ReadOnlyError):
        storage.new_oid()
    with pytest.raises(ReadOnlyError):
        storage.pack_session(tid)
    storage.close()


@pytest.mark.parametrize("mode, level", [("full", 2), ("normal", 1)])
def test_durability_modes(path, mode, level):
    storage = SQLiteStorage(path, synchronous=mode)
    assert storage._writer.execute("PRAGMA synchronous").fetchone()[0] == level
    storage.close()


@pytest.mark.parametrize("cache_size_bytes, kept", [(None, 0), (0, 0), (1 << 20, 3)])
def test_keeps_loaded_records_for_other_views_only_when_given_a_cache(path, cache_size_bytes, kept):
    options = {} if cache_size_bytes is None else {"cache_size_bytes": cache_size_bytes}
    storage = SQLiteStorage(path, **options)
    writer = storage.open_view()
    oids = [storage.new_oid() for _ in range(2)]
    commit(writer, {ROOT_OID: (z64, b"root"), oids[0]: (z64, b"a"), oids[1]: (z64, b"b")})
    first = storage.open_view()
    assert {oid: data for oid, (data, _) in first.load_many([ROOT_OID, *oids]).items()} == {
        ROOT_OID: b"root", oids[0]: b"a", oids[1]: b"b"}
    assert len(storage._records) == kept
    second = storage.open_view()
    assert second.load(oids[1])[0] == b"b"
    assert storage._records.hits == (1 if kept else 0)
    storage.close()


def test_the_commit_writer_has_a_bigger_page_cache_than_readers(path):
    storage = SQLiteStorage(path)
    view = storage.open_view()
    assert storage._writer.execute("PRAGMA cache_size").fetchone()[0] == -32768
    assert view._conn.execute("PRAGMA cache_size").fetchone()[0] == -2000  # SQLite's default
    view.release()
    storage.close()


def test_history_free_keeps_one_revision(path):
    storage = SQLiteStorage(path, keep_history=False)
    view = storage.open_view()
    oid = storage.new_oid()
    serial = z64
    for i in range(5):
        serial = commit(view, {oid: (serial, b"%d" % i)})
    assert storage._conn.execute("SELECT count(*) FROM object_state").fetchone()[0] == 1
    assert view.load_serial(oid, serial) == b"4"
    storage.close()


def test_history_free_view_gets_read_conflict_not_a_wrong_revision(path):
    storage = SQLiteStorage(path, keep_history=False)
    writer, reader = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(writer, {oid: (z64, b"v1")})
    reader.poll()  # snapshot = first; no read transaction yet
    commit(writer, {oid: (first, b"v2")})
    with pytest.raises(ReadConflictError):
        reader.load(oid)
    with pytest.raises(ReadConflictError):
        reader.load_many([oid])
    assert reader.poll() == {oid}
    assert reader.load(oid)[0] == b"v2"
    storage.close()


def test_idle_view_does_not_hold_the_wal(path):
    """After poll a view holds no read transaction, so a checkpoint can empty the WAL."""
    storage = SQLiteStorage(path)
    writer, idle = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(writer, {oid: (z64, b"v1")})
    idle.poll()
    idle.load(oid)  # opens a read transaction, held until the next poll
    commit(writer, {oid: (first, b"v2")})
    checkpoint = "PRAGMA wal_checkpoint(PASSIVE)"  # -> (busy, WAL frames, frames checkpointed)
    _, frames, done = storage._writer.execute(checkpoint).fetchone()
    assert done < frames  # the reader still needs the last commit's frames
    idle.poll()
    _, frames, done = storage._writer.execute(checkpoint).fetchone()
    assert done == frames
    assert idle.load(oid)[0] == b"v2"
    storage.close()


def test_view_is_usable_after_release(path):
    storage = SQLiteStorage(path)
    view = storage.open_view()
    oid = storage.new_oid()
    tid = commit(view, {oid: (z64, b"x")})
    view.poll()
    view.load(oid)
    view.release()
    assert view.poll() == set()
    assert view.load(oid) == (b"x", tid)
    storage.close()


def test_closing_the_storage_closes_its_views(path):
    storage = SQLiteStorage(path)
    view = storage.open_view()
    commit(view, {ROOT_OID: (z64, b"root")})
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        view.load(ROOT_OID)
    with pytest.raises(StorageError, match="closed"):
        view.tpc_begin(TransactionMeta())
    with pytest.raises(StorageError, match="closed"):
        len(storage)


# -- two instances on one file (as two processes would be) ---------------------------------


def test_two_instances_see_each_others_commits_at_poll(path):
    a, b = SQLiteStorage(path), SQLiteStorage(path)
    va, vb = a.open_view(), b.open_view()
    x = a.new_oid()
    y = b.new_oid()
    assert x != y
    tx = commit(va, {x: (z64, b"from a")})
    with pytest.raises(POSKeyError):
        vb.load(x)
    assert vb.poll() == {x}
    assert vb.load(x) == (b"from a", tx)
    ty = commit(vb, {y: (z64, b"from b")})
    assert ty > tx
    assert va.poll() == {y}
    assert b.last_transaction() == a.last_transaction() == ty
    a.close()
    b.close()


def test_two_instances_conflict_instead_of_losing_an_update(path):
    a, b = SQLiteStorage(path), SQLiteStorage(path)
    va, vb = a.open_view(), b.open_view()
    oid = a.new_oid()
    first = commit(va, {oid: (z64, b"1")})
    vb.poll()
    commit(va, {oid: (first, b"2")})
    with pytest.raises(ConflictError):
        commit(vb, {oid: (first, b"lost?")})
    vb.poll()
    assert vb.load(oid)[0] == b"2"
    a.close()
    b.close()


def test_oid_blocks_of_two_instances_never_overlap(path):
    a, b = SQLiteStorage(path), SQLiteStorage(path)
    oids = []
    for _ in range(300):  # interleaved, across several growing blocks
        oids.append(a.new_oid())
        oids.append(b.new_oid())
    assert len(set(oids)) == len(oids)
    a.close()
    b.close()


# -- through the database API ----------------------------------------------------------


def test_db_on_sqlite(path):
    """The whole stack on a file: commit, reopen, see the objects, pack."""
    import transaction
    from helpers import Item

    from atoll.db import DB

    db = DB(SQLiteStorage(path))
    with db.transaction() as conn:
        conn.root()["items"] = [Item(i) for i in range(10)]
        conn.root()["gone"] = Item("garbage soon")
    with db.transaction() as conn:
        del conn.root()["gone"]
    db.close()
    db = DB(SQLiteStorage(path))
    conn = db.open(transaction.TransactionManager())
    assert [item.value for item in conn.root()["items"]] == list(range(10))
    assert len(db) == 12
    conn.close()
    db.pack()
    assert len(db) == 11
    db.close()


def test_pack_keeps_an_object_linked_while_it_walks(path):
    """A commit that lands during pack's reachability walk (here: from another
    instance, as another process would) is taken into account before deleting."""
    import pickle

    storage, other = SQLiteStorage(path), SQLiteStorage(path)
    orphan, garbage = storage.new_oid(), storage.new_oid()
    t1 = commit(
        storage.open_view(),
        {ROOT_OID: (z64, pickle.dumps([])), orphan: (z64, pickle.dumps([])), garbage: (z64, pickle.dumps([]))},
    )
    linked = []

    def references(data: bytes) -> list[tuple[None, bytes]]:
        if not linked:  # first call, in the middle of the walk
            linked.append(commit(other.open_view(), {ROOT_OID: (t1, pickle.dumps([orphan]))}))
        return [(None, oid) for oid in pickle.loads(data)]

    stats = pack_storage(storage, t1, references=references)
    assert linked and stats.objects_removed == 1
    view = storage.open_view()
    assert view.load(orphan)[1] == t1
    with pytest.raises(POSKeyError):
        view.load(garbage)
    storage.close()
    other.close()


def test_pack_reports_its_walk_as_it_goes(path, monkeypatch):
    import atoll.collection.marking as marking
    from test_contract import record, references

    monkeypatch.setattr(marking, "REPORT_EVERY", 3)
    monkeypatch.setattr(marking, "BATCH", 2)
    storage = SQLiteStorage(path)
    view = storage.open_view()
    oids = [storage.new_oid() for _ in range(10)]
    commit(view, {ROOT_OID: (z64, record("root", *oids)), **{o: (z64, record(i)) for i, o in enumerate(oids)}})
    lines: list[str] = []
    pack_storage(storage, storage.last_transaction(), references=references, progress=lines.append)
    assert any(line.phase == "marking" and not line.finished for line in lines)
    assert "removed" in lines[-1]
    storage.close()


def test_a_commit_larger_than_one_insert_statement_writes_every_record(path):
    # Rows go in as multi-row INSERTs of STATES_PER_INSERT; check the seams.
    storage = SQLiteStorage(path)
    try:
        view = storage.open_view()
        count = 2 * sql.STATES_PER_INSERT + 7
        writes = {storage.new_oid(): (z64, b"record %d" % i) for i in range(count)}
        tid = commit(view, writes)
        view.release()
        reader = storage.open_view()
        assert reader.load_many(list(writes)) == {oid: (data, tid) for oid, (_, data) in writes.items()}
        assert len(storage) == count
    finally:
        storage.close()


def test_write_transaction_passes_the_error_on_when_sqlite_ended_the_transaction(tmp_path):
    """A statement that ends the write transaction itself (OR ROLLBACK, disk full):
    the block's error comes out, not a failed ROLLBACK of a transaction gone."""
    from atoll.storage.sqlite_write import write_transaction

    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        with write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT OR ROLLBACK INTO t VALUES (1)")
    assert not conn.in_transaction and conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    conn.close()
