"""Live backups: SQLite's online backup of a file or a collection while writers commit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import transaction
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection import TargetError, backup
from atoll.errors import StorageError, Unsupported
from atoll.progress import ProgressStep

WRITER = textwrap.dedent(
    """
    import sys, transaction, atoll
    from persistent.mapping import PersistentMapping
    target, key = sys.argv[1], sys.argv[2]
    db = atoll.open(target)
    conn = db.open()
    other = conn.get_connection("orders") if len(db.databases) > 1 else None
    n = 0
    while True:
        n += 1
        box = conn.root()[key]  # each writer has its own: no conflicts between them
        box["n"] = n
        box[n] = PersistentMapping(n=n)
        if other is not None:
            other.root()[key]["n"] = n
        transaction.commit()
        print(n, flush=True)
    """
)


def start_writer(target: str, key: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, target, key], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # the writer has committed once
    assert first.strip() == "1", first
    return process


def stop_writer(process: subprocess.Popen) -> int:
    """Stop a writer; the last transaction it acknowledged."""
    process.kill()
    out, _ = process.communicate()
    return int(out.split()[-1]) if out.split() else 1


def fill(path: str, n: int = 200) -> None:
    db = atoll.open(path)
    with db.transaction() as conn:
        conn.root()["items"] = PersistentMapping({i: PersistentMapping(i=i) for i in range(n)})
        conn.root()["a"], conn.root()["b"] = PersistentMapping(), PersistentMapping()
    db.close()


def test_a_backup_opens_as_the_same_database(tmp_path: Path):
    source, copy = str(tmp_path / "app.db"), str(tmp_path / "copy.db")
    fill(source)
    steps: list[str] = []
    stats = backup(source, copy, progress=steps.append)
    assert stats.files == {"main": copy} and stats.size == os.path.getsize(copy)
    assert any(isinstance(s, ProgressStep) and s.unit == "pages" for s in steps)
    db = atoll.open(copy)
    with db.transaction() as conn:
        assert sum(m["i"] for m in conn.root()["items"].values()) == sum(range(200))
    assert db.lastTransaction() == atoll.open(source).lastTransaction()
    db.close()
    assert not os.path.exists(copy + ".partial")


def test_a_backup_taken_while_two_processes_commit_has_everything_before_it(tmp_path: Path):
    source, copy = str(tmp_path / "app.db"), str(tmp_path / "copy.db")
    fill(source, 2000)
    writers = [start_writer(source, "a"), start_writer(source, "b")]
    try:
        time.sleep(0.3)
        from atoll.storage import SQLiteStorage

        probe = SQLiteStorage(source, read_only=True)
        committed_before = probe.last_transaction()
        probe.close()
        backup(source, copy)
    finally:
        acknowledged = [stop_writer(w) for w in writers]
    db = atoll.open(copy)
    try:
        assert db.lastTransaction() >= committed_before
        with db.transaction() as conn:
            root = conn.root()
            for key, last in zip("ab", acknowledged):
                n = root[key]["n"]
                assert 1 <= n <= last
                # every object those transactions wrote loads
                assert all(root[key][i]["n"] == i for i in range(1, n + 1))
            assert len(root["items"]) == 2000
    finally:
        db.close()


def collection_config(folder: Path) -> str:
    conf = folder / "app.conf"
    conf.write_text(
        f"<zodb users>\n  <sqlitestorage>\n    path {folder / 'users.db'}\n  </sqlitestorage>\n</zodb>\n"
        f"<zodb orders>\n  <sqlitestorage>\n    path {folder / 'orders.db'}\n  </sqlitestorage>\n</zodb>\n"
    )
    db = atoll.open(str(conf))
    conn = db.open()
    ada = PersistentMapping(name="Ada")
    conn.root()["ada"] = ada
    conn.add(ada)
    orders = conn.get_connection("orders")
    orders.root()["first"] = PersistentMapping(customer=ada)
    conn.root()["seq"], orders.root()["seq"] = PersistentMapping(n=0), PersistentMapping(n=0)
    transaction.commit()
    conn.close()
    for each in list(db.databases.values()):
        each.close()
    return str(conf)


def test_a_collection_backup_holds_the_same_transactions_in_every_database(tmp_path: Path):
    conf = collection_config(tmp_path)
    writer = start_writer(conf, "seq")
    try:
        time.sleep(0.3)
        stats = backup(conf, tmp_path / "backup")
    finally:
        stop_writer(writer)
    assert set(stats.files) == {"users", "orders"} and stats.config is not None
    db = atoll.open(stats.config)
    try:
        conn = db.open()
        orders = conn.get_connection("orders")
        assert conn.root()["seq"]["n"] == orders.root()["seq"]["n"] >= 1  # one commit, both files
        assert orders.root()["first"]["customer"]["name"] == "Ada"  # cross-database reference
        conn.close()
    finally:
        for each in list(db.databases.values()):
            each.close()


def test_backup_refuses_what_it_cannot_do_and_writes_nothing(tmp_path: Path):
    source = str(tmp_path / "app.db")
    fill(source, 3)
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(StorageError, match="exists: give a new file name"):
        backup(source, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(TargetError, match="no database at"):
        backup(str(tmp_path / "missing.db"), tmp_path / "x.db")
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "x.db").exists()
    with pytest.raises(Unsupported, match="copy it with atoll.copy"):
        backup(atoll.DB(None), tmp_path / "y.db")
    (tmp_path / "c").mkdir()
    conf = collection_config(tmp_path / "c")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(TargetError, match="not empty"):
        backup(conf, busy)


def test_postgresql_is_backed_up_with_pg_dump(tmp_path: Path):
    """The documented procedure (docs/operations.md), run once: pg_dump of the
    schema, restored into another database, opens with every object."""
    import postgres_support

    storage = postgres_support.make_storage("backup")
    db = atoll.DB(storage)
    with db.transaction() as conn:
        conn.root()["items"] = PersistentMapping({i: PersistentMapping(i=i) for i in range(50)})
    with pytest.raises(Unsupported, match=f"pg_dump --schema={storage.schema}"):
        backup(db, tmp_path / "pg.db")
    db.close()
    dump = tmp_path / "dump.sql"
    subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", f"--schema={storage.schema}", "-f", str(dump)],
        check=True,
    )
    scratch = f"atoll_restore_{uuid.uuid4().hex[:8]}"
    admin = postgres_support.admin_connection()
    try:
        admin.execute(f'CREATE DATABASE "{scratch}"')
        subprocess.run(
            ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", scratch, "-v", "ON_ERROR_STOP=1", "-f", str(dump)],
            check=True, capture_output=True,
        )
        restored = atoll.DB(f"postgresql://postgres@127.0.0.1:5432/{scratch}?schema={storage.schema}")
        with restored.transaction() as conn:
            assert sum(m["i"] for m in conn.root()["items"].values()) == sum(range(50))
        restored.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        admin.close()
