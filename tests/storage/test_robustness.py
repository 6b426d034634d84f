"""Robustness of the storages (issue 16): damaged records, file handles, read-only
media, lock waits, bad arguments, bounded history-free files, commits that never
fail after they are durable. Each test is named after the point it checks.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import atoll
import atoll.config
from atoll.errors import CorruptRecordError, LockTimeoutError, StorageError
from atoll.ids import ROOT_OID, p64, u64, z64
from atoll.storage import sqlite_sql
from atoll.storage.base import TransactionMeta
from atoll.storage.memory import MinimalMemoryStorage
from atoll.storage.sqlite import SQLiteStorage
from storage_helpers import commit


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")


# -- checksums -------------------------------------------------------------------------


def marker(n: int) -> bytes:
    """A record that can be found in the file by its bytes: unique, a few hundred bytes."""
    rng = random.Random(n)
    return b"<<record %05d>>" % n + bytes(rng.randrange(256) for _ in range(300)) + b"<<end %05d>>" % n


def test_every_bit_flip_inside_record_data_is_reported_never_a_wrong_value(tmp_path: Path):
    """Flip one bit inside each of many records of an SQLite file (one file per
    flip): loading it raises one CorruptRecordError naming database, oid and tid,
    and verify() lists exactly that record; the other records load intact."""
    path = tmp_path / "sound.db"
    storage = SQLiteStorage(path)
    view = storage.open_view()
    records = {p64(n): marker(n) for n in range(1, 41)}
    tid = commit(view, {oid: (z64, data) for oid, data in records.items()})
    storage.close()
    sound = path.read_bytes()
    rng = random.Random(16)
    for n in range(1, 41):
        data = records[p64(n)]
        start = sound.index(data)
        where = start + rng.randrange(len(data))
        damaged = bytearray(sound)
        damaged[where] ^= 1 << rng.randrange(8)
        copy = tmp_path / f"flip{n}.db"
        copy.write_bytes(bytes(damaged))
        storage = SQLiteStorage(copy, read_only=True)
        try:
            reader = storage.open_view()
            with pytest.raises(CorruptRecordError) as caught:
                reader.load(p64(n))
            error = caught.value
            assert (error.database, error.oid, error.tid) == (str(copy), p64(n), tid)
            assert str(copy) in str(error) and hex(n) in str(error)
            with pytest.raises(CorruptRecordError):
                reader.load_many([p64(n)])
            other = p64(n % 40 + 1)
            assert reader.load(other) == (records[other], tid)
            found = storage.verify()
            assert [(d.oid, d.tid) for d in found] == [(p64(n), tid)]
        finally:
            storage.close()


def test_a_damaged_record_is_reported_by_iteration_and_verify(tmp_path: Path):
    storage = SQLiteStorage(tmp_path / "x.db")
    try:
        view = storage.open_view()
        tid = commit(view, {ROOT_OID: (z64, b"root"), p64(1): (z64, b"one")})
        storage._writer.execute("UPDATE object_state SET state = ? WHERE zoid = 1", (b"ONE",))
        with pytest.raises(CorruptRecordError):
            list(storage.iterator())
        [damage] = storage.verify()
        assert (damage.oid, damage.tid) == (p64(1), tid)
        assert "damaged record" in str(damage) and "0x1" in str(damage)
    finally:
        storage.close()


def make_version_1(path: Path) -> None:
    """Turn a new atoll file into one as atoll wrote it before checksums (version 1)."""
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE object_state DROP COLUMN checksum")
    conn.execute("ALTER TABLE transactions DROP COLUMN partners")
    conn.execute("DROP TABLE commit_pending")  # and before the commit tables (version 3)
    conn.execute("DROP TABLE commit_decisions")
    conn.execute("UPDATE atoll_meta SET value = 1 WHERE key = 'schema_version'")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_file_without_checksums_still_opens(tmp_path: Path):
    path = tmp_path / "old.db"
    storage = SQLiteStorage(path)
    view = storage.open_view()
    first = commit(view, {ROOT_OID: (z64, b"root"), p64(1): (z64, b"old")})
    storage.close()
    make_version_1(path)
    # Read-only: read as it is, unchecked.
    reader = SQLiteStorage(path, read_only=True)
    assert reader.open_view().load(p64(1)) == (b"old", first)
    assert reader.verify() == []
    reader.close()
    # Writable: upgraded; old rows unchecked, new ones checked.
    storage = SQLiteStorage(path)
    view = storage.open_view()
    assert view.load(p64(1)) == (b"old", first)
    commit(view, {p64(2): (z64, b"new")})
    lines: list[str] = []
    assert storage.verify(progress=lines.append) == []
    assert "1 damaged" not in lines[-1] and "unchecked" in lines[-1]
    storage._writer.execute("UPDATE object_state SET state = ? WHERE zoid = 2", (b"NEW",))
    assert [d.oid for d in storage.verify()] == [p64(2)]
    storage.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_sql.SCHEMA_VERSION
    conn.close()


# -- file handles and threads ------------------------------------------------------------


@needs_proc
def test_close_releases_every_sqlite_handle_and_thread(tmp_path: Path):
    """300 open/commit/close cycles with the garbage collector off leave no
    descriptor and no thread behind."""
    path = str(tmp_path / "cycles.db")
    SQLiteStorage(path).close()
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        fds, threads = open_fds(), threading.active_count()
        for n in range(300):
            db = atoll.DB(SQLiteStorage(path, synchronous="normal"))
            with db.transaction() as conn:
                conn.root()["n"] = n
            db.close()
        assert open_fds() == fds
        assert threading.active_count() == threads
    finally:
        if was_enabled:
            gc.enable()


@needs_proc
def test_a_view_closed_or_dropped_releases_its_sqlite_connection(tmp_path: Path):
    storage = SQLiteStorage(tmp_path / "x.db")
    try:
        commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            fds = open_fds()
            view = storage.open_view()
            view.load(ROOT_OID)
            view.close()
            assert open_fds() == fds
            view = storage.open_view()
            view.load(ROOT_OID)
            del view  # dropped without close, as a pool drops a connection
            assert open_fds() == fds
        finally:
            if was_enabled:
                gc.enable()
    finally:
        storage.close()


# -- read-only media ----------------------------------------------------------------------

READ_ONLY_CHILD = textwrap.dedent(
    """
    import sys
    from atoll.storage.sqlite import SQLiteStorage
    from atoll.errors import StorageError
    storage = SQLiteStorage(sys.argv[1], read_only=True)
    print(storage.open_view().load(b"\\0" * 8)[0].decode())
    storage.close()
    try:
        SQLiteStorage(sys.argv[1])
    except StorageError as e:
        print("writable:", e)
    """
)


def run_without_write_access(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the child in a process that cannot write ``folder``: this user after a
    chmod, or as root the user nobody (skips when that cannot run this Python)."""
    code = [sys.executable, "-c", READ_ONLY_CHILD, *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(code, capture_output=True, text=True, env=env)
    import shutil

    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: no user who cannot write the folder")
    # This Python may live where nobody cannot reach (a venv under /root): try the
    # system's Python of the same version too, with this one's packages on the path.
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    tried = []
    for python in dict.fromkeys([sys.executable, os.path.realpath(sys.executable), f"/usr/bin/{version}"]):
        probe = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "import atoll"], capture_output=True, env=env)
        if probe.returncode == 0:
            return subprocess.run(["runuser", "-u", "nobody", "--", python, *code[1:]], capture_output=True, text=True, env=env)
        tried.append(f"{python}: {probe.stderr.decode().strip()[-120:]}")
    pytest.skip(f"the user nobody cannot run this Python ({'; '.join(tried)})")


def test_a_database_on_read_only_media_opens_read_only(tmp_path: Path):
    import shutil
    import tempfile

    # Not under tmp_path: pytest makes that reachable by its owner only.
    folder = Path(tempfile.mkdtemp(prefix="atoll-media-"))
    folder.chmod(0o755)
    try:
        check_read_only_media(folder)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def check_read_only_media(folder: Path) -> None:
    path = folder / "shipped.db"
    storage = SQLiteStorage(path)
    commit(storage.open_view(), {ROOT_OID: (z64, b"on a CD")})
    storage.close()  # the log is copied into the file: no -wal left
    folder.chmod(0o755)
    path.chmod(0o644)
    try:
        result = run_without_write_access(folder, str(path))
    finally:
        folder.chmod(0o755)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "on a CD"
    assert lines[1].startswith("writable:") and "read_only=True" in lines[1]


def test_read_only_media_with_an_unmerged_log_says_why_it_cannot_open(tmp_path: Path):
    from atoll.storage.sqlite_open import read_only_media

    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "x.db-wal").write_bytes(b"x" * 100)
    error = sqlite3.OperationalError("attempt to write a readonly database")
    error.sqlite_errorname = "SQLITE_READONLY_DIRECTORY"
    with pytest.raises(StorageError, match="write-ahead log .* holds commits not yet copied"):
        read_only_media(str(folder / "x.db"), True, error)


# -- lock waits and bad arguments ------------------------------------------------------------


def test_the_in_process_commit_lock_wait_ends_in_a_clear_error(tmp_path: Path):
    storage = SQLiteStorage(tmp_path / "x.db", commit_lock_timeout=0.2)
    try:
        commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
        holder, waiter = storage.open_view(), storage.open_view()
        holder.tpc_begin(TransactionMeta())
        holder.store(p64(1), z64, b"a")
        holder.tpc_vote()  # holds the commit lock
        waiter.tpc_begin(TransactionMeta())
        waiter.store(p64(2), z64, b"b")
        with pytest.raises(LockTimeoutError, match="commit lock for more than 0.2 s"):
            waiter.tpc_vote()
        waiter.tpc_abort()
        holder.tpc_finish()
        commit(waiter, {p64(2): (z64, b"b")})  # free again
    finally:
        storage.close()


def test_the_file_write_lock_wait_ends_in_a_clear_error(tmp_path: Path):
    """Another process holds the file's write lock (BEGIN IMMEDIATE) too long."""
    path = tmp_path / "x.db"
    storage = SQLiteStorage(path, commit_lock_timeout=0.2)
    try:
        commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        view = storage.open_view()
        view.tpc_begin(TransactionMeta())
        view.store(p64(1), z64, b"a")
        with pytest.raises(LockTimeoutError, match="within 0.2 s"):
            view.tpc_vote()
        view.tpc_abort()
        other.execute("ROLLBACK")
        other.close()
        commit(view, {p64(1): (z64, b"a")})
    finally:
        storage.close()


@pytest.mark.parametrize(
    "target, message",
    [
        ("postgresql://u@h/db?lock_wait=inf", "lock_wait='inf' is not a number of seconds"),
        ("postgresql://u@h/db?lock_wait=1e12", "lock_wait='1e12' is not a number of seconds"),
        ("postgresql://u@h/db?lock_wait=0", "lock_wait='0' is not a number of seconds from more than 0"),
        ("postgresql://u@h/db?commit_lock_timeout=-1", "commit_lock_timeout='-1'"),
        ("sqlite:///tmp/x.db?commit_lock_timeout=nan", "commit_lock_timeout='nan'"),
    ],
)
def test_lock_waits_out_of_range_get_one_clear_error(target: str, message: str):
    with pytest.raises(ValueError, match=message) as caught:
        atoll.open(target)
    assert "\n" not in str(caught.value)


def test_a_lock_wait_below_zero_in_a_config_gets_one_clear_error(tmp_path: Path):
    config = tmp_path / "db.conf"
    config.write_text(
        "<zodb>\n  <postgresqlstorage>\n    dsn host=127.0.0.1 port=1 dbname=none\n    lock-wait -5\n"
        "  </postgresqlstorage>\n</zodb>\n"
    )
    with pytest.raises(ValueError, match=r"lock_wait must be a number of seconds from more than 0 .* not -5"):
        atoll.config.databaseFromFile(str(config))
    config.write_text(f"<zodb>\n  <sqlitestorage>\n    path {tmp_path}/x.db\n    commit-lock-timeout -5\n  </sqlitestorage>\n</zodb>\n")
    with pytest.raises(ValueError, match="commit_lock_timeout must be a number of seconds"):
        atoll.config.databaseFromFile(str(config))
    assert not (tmp_path / "x.db").exists()


def test_a_path_with_a_nul_byte_gets_one_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="contains a NUL byte"):
        atoll.open(str(tmp_path / "a\0b.db"))
    with pytest.raises(ValueError, match="contains a NUL byte"):
        atoll.open(f"sqlite://{tmp_path}/a%00b.db")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("target", ["memory:", ":memory:", "memory", "sqlite:app.db", "sqlite:/abs/app.db", "postgresql:db"])
def test_a_mistyped_uri_is_refused_instead_of_creating_a_file(target: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as caught:
        atoll.open(target)
    assert repr(target) in str(caught.value) and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []
    atoll.open("./memory").close()  # a file of that name, asked for plainly
    assert os.listdir(tmp_path) == ["memory"]


# -- commits that are durable never fail; bounded history-free files -------------------------


def test_tpc_finish_never_raises_after_the_commit_is_durable(tmp_path: Path, monkeypatch, caplog):
    storage = SQLiteStorage(tmp_path / "x.db")
    try:

        def broken(nbytes: int) -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(storage._checkpointer, "wrote", broken)
        view = storage.open_view()
        with caplog.at_level(logging.WARNING, logger="atoll.storage.sqlite"):
            tid = commit(view, {ROOT_OID: (z64, b"root")})
        assert "can't start new thread" in caplog.text
        assert storage.last_transaction() == tid
        commit(view, {p64(1): (z64, b"next")})  # the lock was released
    finally:
        storage.close()


def test_a_history_free_database_stays_bounded_without_a_pack(tmp_path: Path):
    """2,000 commits to one object leave a handful of transaction rows, not 2,001."""
    storage = SQLiteStorage(tmp_path / "hf.db", keep_history=False, synchronous="normal")
    try:
        view = storage.open_view()
        serial = commit(view, {ROOT_OID: (z64, b"root")})
        for n in range(2000):
            serial = commit(view, {ROOT_OID: (serial, b"root %d" % n)})
        view.poll()
        assert view.load(ROOT_OID) == (b"root 1999", serial)
        rows = storage._conn.execute(sqlite_sql.COUNT_TRANSACTIONS).fetchone()[0]
        assert rows <= sqlite_sql.PRUNE_EVERY + 1
        assert rows < 2001
    finally:
        storage.close()


def test_a_history_free_pruning_leaves_pollers_informed(tmp_path: Path, monkeypatch):
    """A view polled before the pruning still learns every object changed since."""
    monkeypatch.setattr(sqlite_sql, "PRUNE_EVERY", 5)
    storage = SQLiteStorage(tmp_path / "hf.db", keep_history=False, synchronous="normal")
    try:
        writer, idle = storage.open_view(), storage.open_view()
        serials = {oid: commit(writer, {oid: (z64, b"v0")}) for oid in (ROOT_OID, p64(1), p64(2))}
        idle.poll()
        for n in range(12):
            oid = p64(n % 2)  # the root and 0x1 change; 0x2 does not
            serials[oid] = commit(writer, {oid: (serials[oid], b"v%d" % (n + 1))})
        assert idle.poll() == {ROOT_OID, p64(1)}
    finally:
        storage.close()


def test_a_minimal_memory_storage_stays_bounded_without_a_pack():
    storage = MinimalMemoryStorage()
    view = storage.open_view()
    serial = commit(view, {ROOT_OID: (z64, b"root")})
    for n in range(2000):
        view.poll()  # as a connection does when its transaction starts
        serial = commit(view, {ROOT_OID: (serial, b"%d" % n)})
    assert len(storage._tids) <= 2
