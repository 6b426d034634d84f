"""Commits across several SQLite files stay atomic when the committing process dies
between two files' commits (atoll.storage.sqlite_prepared)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from atoll.errors import ConflictError, StorageError
from atoll.ids import p64, z64
from atoll.storage import sqlite_prepared as prepared
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Stores one record in the root of each file as one multi-database commit, finishes
# the first ``finished`` files (in the transaction package's order) and dies.
PREPARE_AND_DIE = """
import os, signal, sys, uuid
from atoll.ids import z64
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage

finished, paths = int(sys.argv[1]), sys.argv[2:]
storages = sorted((SQLiteStorage(path) for path in paths), key=lambda s: s.sort_key())
participants, shared_id, views = [s.sort_key() for s in storages], uuid.uuid4().hex, []
for storage in storages:
    view = storage.open_view()
    view.tpc_begin(TransactionMeta(description="killed", id=shared_id, participants=participants))
    view.store(z64, view.load(z64)[1], b"from the killed process")
    views.append(view)
for view in views:
    view.tpc_vote()
for view in views[:finished]:
    view.tpc_finish()
os.kill(os.getpid(), signal.SIGKILL)
"""


def commit_root(storage: SQLiteStorage, data: bytes) -> bytes:
    view = storage.open_view()
    try:
        serial = view.load(z64)[1]
    except KeyError:
        serial = z64
    view.tpc_begin(TransactionMeta())
    view.store(z64, serial, data)
    view.tpc_vote()
    tid = view.tpc_finish()
    view.release()
    return tid


def root_data(storage: SQLiteStorage) -> bytes:
    view = storage.open_view()
    try:
        return view.load(z64)[0]
    finally:
        view.release()


@pytest.fixture
def two_files(tmp_path: Path) -> list[str]:
    """Two SQLite files whose roots say b"before", in commit (sort key) order."""
    paths = sorted(str(tmp_path / name) for name in ("a.db", "b.db"))
    for path in paths:
        storage = SQLiteStorage(path)
        commit_root(storage, b"before")
        storage.close()
    return paths


def die_after_finishing(finished: int, paths: list[str]) -> None:
    child = subprocess.run(
        [sys.executable, "-c", PREPARE_AND_DIE, str(finished), *paths],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
    )
    assert child.returncode == -9, child.stderr


def committed(path: str) -> bytes:
    storage = SQLiteStorage(path)  # opening settles
    try:
        assert not os.path.exists(prepared.prepared_path(path))
        return root_data(storage)
    finally:
        storage.close()


@pytest.mark.parametrize("reopen_first", [0, 1])
def test_killed_after_the_first_finish_the_other_file_commits_on_reopen(two_files, reopen_first, caplog):
    die_after_finishing(1, two_files)
    assert all(os.path.exists(prepared.prepared_path(p)) for p in two_files)
    order = two_files if reopen_first == 0 else two_files[::-1]
    with caplog.at_level(logging.WARNING, logger="atoll.storage.sqlite_prepared"):
        assert [committed(path) for path in order] == [b"from the killed process"] * 2
    assert "committed transaction" in caplog.text and "prepared by a process that stopped" in caplog.text


def test_killed_before_any_finish_both_files_drop_the_commit(two_files, caplog):
    die_after_finishing(0, two_files)
    with caplog.at_level(logging.WARNING, logger="atoll.storage.sqlite_prepared"):
        assert [committed(path) for path in two_files] == [b"before", b"before"]
    assert caplog.text.count("dropped transaction") == 2


def test_killed_after_every_finish_leaves_nothing_to_settle(two_files, caplog):
    die_after_finishing(2, two_files)
    with caplog.at_level(logging.WARNING, logger="atoll.storage.sqlite_prepared"):
        assert [committed(path) for path in two_files] == [b"from the killed process"] * 2
    assert caplog.text == ""  # the files only had to go


def test_an_open_writer_settles_at_its_next_vote(two_files):
    storages = [SQLiteStorage(path) for path in two_files]  # open before the crash
    try:
        views = [storage.open_view() for storage in storages]
        serials = [view.load(z64)[1] for view in views]
        die_after_finishing(1, two_files)
        # The second file's vote settles first: the dead process's commit is then the
        # current revision, so this commit, made from an older snapshot, conflicts.
        views[1].tpc_begin(TransactionMeta())
        views[1].store(z64, serials[1], b"from an old snapshot")
        with pytest.raises(ConflictError):
            views[1].tpc_vote()
        views[1].tpc_abort()
        assert not os.path.exists(prepared.prepared_path(two_files[1]))
        views[1].poll()
        assert views[1].load(z64)[0] == b"from the killed process"
        for view in views:
            view.release()
    finally:
        for storage in storages:
            storage.close()


def test_a_missing_partner_stops_settling_until_the_prepared_file_goes(two_files):
    die_after_finishing(0, two_files)
    first, second = two_files
    os.unlink(first)
    with pytest.raises(StorageError) as caught:
        SQLiteStorage(second)
    message = str(caught.value)
    assert first in message and prepared.prepared_path(second) in message and "\n" not in message
    os.unlink(prepared.prepared_path(second))  # give the commit up, as the message says
    assert committed(second) == b"before"


def test_commits_of_one_file_write_no_prepared_file(tmp_path: Path):
    path = str(tmp_path / "one.db")
    storage = SQLiteStorage(path)
    view = storage.open_view()
    view.tpc_begin(TransactionMeta(id="x", participants=[storage.sort_key(), "memory:other:1"]))
    view.store(z64, z64, b"root")
    view.tpc_vote()
    assert not os.path.exists(prepared.prepared_path(path))
    view.tpc_finish()
    storage.close()


def vote_in_each(storages: list[SQLiteStorage], data: bytes) -> list:
    """Views that have voted one commit over all ``storages``, writing ``data`` to each root."""
    keys = [storage.sort_key() for storage in storages]
    views = [storage.open_view() for storage in storages]
    for view in views:
        view.tpc_begin(TransactionMeta(id="shared", participants=keys))
        view.store(z64, view.load(z64)[1], data)
    for view in views:
        view.tpc_vote()
    return views


def test_a_finished_commit_leaves_its_prepared_file_to_the_next_writer(two_files):
    storages = [SQLiteStorage(path) for path in two_files]
    views = vote_in_each(storages, b"both")
    for path in two_files:
        assert prepared.read(prepared_path := prepared.prepared_path(path)) is not None, prepared_path
    for view in views:
        view.tpc_finish()
    assert os.path.exists(prepared.prepared_path(two_files[0]))  # removed under the write lock only
    commit_root(storages[0], b"next")  # the next vote removes it
    assert not os.path.exists(prepared.prepared_path(two_files[0]))
    for storage in storages:
        storage.close()


def test_closing_removes_the_prepared_file_of_a_finished_commit(two_files):
    storages = [SQLiteStorage(path) for path in two_files]
    views = vote_in_each(storages, b"both")
    for view in views:
        view.tpc_finish()
    for storage in storages:
        storage.close()
    assert [p for p in two_files if os.path.exists(prepared.prepared_path(p))] == []
    assert [committed(path) for path in two_files] == [b"both", b"both"]


def test_an_aborted_vote_removes_its_prepared_file(two_files):
    storages = [SQLiteStorage(path) for path in two_files]
    view = storages[0].open_view()
    view.tpc_begin(TransactionMeta(id="shared", participants=[s.sort_key() for s in storages]))
    view.store(z64, view.load(z64)[1], b"never")
    view.tpc_vote()
    assert os.path.exists(prepared.prepared_path(two_files[0]))
    view.tpc_abort()
    assert not os.path.exists(prepared.prepared_path(two_files[0]))
    assert root_data(storages[0]) == b"before"
    for storage in storages:
        storage.close()


def test_prepared_file_round_trips_with_its_records(tmp_path: Path):
    path = str(tmp_path / "x.db-prepared")
    records = {p64(3): (z64, b"three"), p64(1): (p64(7), b"one" * 1000)}
    commit = prepared.PreparedCommit(
        tid=42, txn_id="abc", partners=["/p/b.db"], prepared_at=1.5, user="ada", description="d",
        extension=b"\x80ext", records=records,
    )
    prepared.write(path, commit, durable=True)
    header = prepared.read(path)
    assert (header.tid, header.txn_id, header.partners, header.user, header.extension) == (
        42, "abc", ["/p/b.db"], "ada", b"\x80ext"
    )
    assert header.records == {}  # the header alone unless records are asked for
    whole = prepared.read(path, records=True)
    assert list(whole.records.items()) == list(records.items())  # store order kept
    assert not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_a_damaged_prepared_file_is_refused_by_name(tmp_path: Path, damage: str):
    path = str(tmp_path / "x.db-prepared")
    commit = prepared.PreparedCommit(tid=1, txn_id="t", partners=[], prepared_at=0.0, records={p64(1): (z64, b"r" * 50)})
    prepared.write(path, commit, durable=False)
    data = bytearray(Path(path).read_bytes())
    if damage == "truncate":
        data = data[:-10]
    elif damage == "flip":
        data[-20] ^= 0xFF
    else:
        data[:8] = b"NOTATOLL"
    Path(path).write_bytes(bytes(data))
    with pytest.raises(StorageError, match=path.replace(".", r"\.")):
        prepared.read(path, records=True)


def test_sqlite_partners_are_the_other_sqlite_files_unless_another_kind_takes_part():
    own = "sqlite:/d/a.db"
    assert prepared.sqlite_partners([own, "sqlite:/d/b.db", "memory:m:1"], own) == ["/d/b.db"]
    assert prepared.sqlite_partners([own, "memory:m:1"], own) == []
    assert prepared.sqlite_partners([own, "sqlite:/d/b.db", "postgresql:x/test/s"], own) == []


def test_a_prepared_file_of_another_database_is_refused_by_name(two_files):
    first, second = two_files
    storage = SQLiteStorage(first)
    tid = commit_root(storage, b"mine")
    storage.close()
    stray = prepared.PreparedCommit(
        tid=int.from_bytes(tid, "big"), txn_id="someone else's", partners=[second], prepared_at=0.0
    )
    prepared.write(prepared.prepared_path(first), stray, durable=False)
    with pytest.raises(StorageError, match="does not belong to"):
        SQLiteStorage(first)


def test_a_decided_commit_older_than_the_file_is_not_inserted_out_of_order(two_files):
    first, second = two_files
    die_after_finishing(1, two_files)  # the first file committed, the second is prepared
    commit = prepared.read(prepared.prepared_path(second), records=True)
    commit.tid = 1  # older than what the file holds: inserting it would rewrite the past
    prepared.write(prepared.prepared_path(second), commit, durable=False)
    with pytest.raises(StorageError, match="has commits after it"):
        SQLiteStorage(second)


def test_a_read_only_open_leaves_a_prepared_commit_and_says_so(two_files, caplog):
    die_after_finishing(1, two_files)
    second = two_files[1]
    with caplog.at_level(logging.WARNING, logger="atoll.storage.sqlite"):
        reader = SQLiteStorage(second, read_only=True)
    try:
        assert "read-only storage cannot settle it" in caplog.text and second in caplog.text
        assert root_data(reader) == b"before"  # not settled: nothing written
        assert os.path.exists(prepared.prepared_path(second))
    finally:
        reader.close()
    assert committed(second) == b"from the killed process"  # a writable open settles it


def test_a_prepared_file_of_another_format_version_is_refused_by_name(tmp_path: Path):
    path = str(tmp_path / "x.db-prepared")
    prepared.write(path, prepared.PreparedCommit(tid=1, txn_id="t", partners=[], prepared_at=0.0), durable=False)
    data = Path(path).read_bytes().replace(b'"version": 1', b'"version": 9')
    header_length = int.from_bytes(data[8:12], "big")
    header = data[12 : 12 + header_length]
    Path(path).write_bytes(data[:12] + header + zlib.crc32(header).to_bytes(4, "big") + data[16 + header_length :])
    with pytest.raises(StorageError, match="another atoll version"):
        prepared.read(path)
