"""Undo of multi-database transactions with other processes about (SQLite files).

Each transaction of these tests changes OBJECTS objects in each of two databases,
all to the same value; undoing the newest transaction flips them all back (the
newest is always the previous undo, so every undo flips).

* A reader process never sees a database half undone: in each of its transactions,
  the objects of one database all hold one value.
* A process killed with SIGKILL in the middle of undoing (now and then between the
  two databases' finishes) leaves, after reopening, the undo in both databases or in
  neither: both hold the same value and the same number of transactions, and no
  acknowledged undo is lost. ``ATOLL_UNDO_KILLS`` asks for more rounds.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import transaction
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection import undo_log
from atoll.storage.sqlite import SQLiteStorage, SQLiteView
from kill_support import run_until_killed

OBJECTS = 10
KILLS = int(os.environ.get("ATOLL_UNDO_KILLS", "12"))
DIE_BETWEEN_FINISHES = 0.15  # chance per undo that the child dies between its two finishes
SEED = int(os.environ.get("ATOLL_CRASH_SEED", "0")) or random.randrange(1 << 30)


def open_collection(where: Path | dict[str, str]) -> dict:
    """The collection of databases a and b: SQLite files in a folder, or PostgreSQL
    schemas (name -> schema)."""
    databases: dict = {}
    for name in "ab":
        if isinstance(where, Path):
            storage = SQLiteStorage(where / f"{name}.db")
        else:
            from atoll.storage.postgresql import PostgreSQLStorage
            from postgres_support import postgres_dsn

            storage = PostgreSQLStorage(postgres_dsn(), schema=where[name])
        atoll.DB(storage, database_name=name, databases=databases)
    return databases


def place(kind: str, tmp_path: Path, test: str) -> Path | dict[str, str]:
    if kind == "sqlite":
        return tmp_path
    import postgres_support

    schemas = {}
    for name in "ab":  # fresh schemas, dropped when the test process exits
        storage = postgres_support.make_storage(f"{test}_{name}")
        schemas[name] = storage.schema
        storage.close()
    return schemas


def close_collection(databases: dict) -> None:
    transaction.abort()
    for db in databases.values():
        db.close()


def prepare(where: Path | dict[str, str]) -> None:
    """Objects at 0 in both databases, then one transaction setting them all to 1."""
    databases = open_collection(where)
    conn = databases["a"].open()
    for name in "ab":
        conn.get_connection(name).root()["objs"] = [PersistentMapping(v=0) for _ in range(OBJECTS)]
    transaction.commit()
    for name in "ab":
        for obj in conn.get_connection(name).root()["objs"]:
            obj["v"] = 1
    transaction.get().note("flip")
    transaction.commit()
    conn.close()
    close_collection(databases)


def values(conn, name: str) -> set[int]:
    return {obj["v"] for obj in conn.get_connection(name).root()["objs"]}


def undo_newest(databases: dict) -> None:
    newest = undo_log(databases, 0, 1)[0]
    assert newest["databases"] == ("a", "b")
    databases["a"].undo(newest["id"])
    transaction.commit()


def flipper(where: Path | dict[str, str], flips: int, pause: float, go) -> None:
    go.wait(60)  # until the reader has its databases open
    databases = open_collection(where)
    try:
        for _ in range(flips):
            undo_newest(databases)
            time.sleep(pause)
    finally:
        close_collection(databases)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_reader_sees_each_database_before_or_after_an_undo(kind: str, tmp_path: Path, request):
    where = place(kind, tmp_path, request.node.name)
    prepare(where)
    # Forked before the reader opens anything: a child must not inherit (and use, when
    # its transaction manager calls the synchronizers it inherited) the reader's sessions.
    fork = multiprocessing.get_context("fork")
    go = fork.Event()
    writer = fork.Process(target=flipper, args=(where, 20, 0.01, go))
    writer.start()
    databases = open_collection(where)
    conn = databases["a"].open()
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    try:
        go.set()
        while writer.is_alive():
            transaction.begin()  # a new snapshot of each database
            for name in "ab":
                found = values(conn, name)
                assert len(found) == 1, f"database {name!r} read half undone: {found}"
                seen[name] |= found
        writer.join()
        assert writer.exitcode == 0
        transaction.begin()
        assert values(conn, "a") == values(conn, "b") == {1}  # 20 flips: back where it was
    finally:
        conn.close()
        close_collection(databases)
    assert seen["a"] == seen["b"] == {0, 1}, "the reader saw no undo happen"


def killed_flipper(folder: Path, report: int, seed: int) -> None:
    """Undo forever; die between the two databases' finishes now and then."""
    rng = random.Random(seed)
    finish = SQLiteView.tpc_finish
    finishes = [0]

    def tpc_finish(view: SQLiteView) -> bytes:
        tid = finish(view)
        finishes[0] += 1
        if finishes[0] % 2 == 1 and rng.random() < DIE_BETWEEN_FINISHES:
            os.kill(os.getpid(), signal.SIGKILL)
        return tid

    SQLiteView.tpc_finish = tpc_finish  # type: ignore[method-assign]
    databases = open_collection(folder)
    while True:
        undo_newest(databases)
        os.write(report, b"1\n")


def test_a_killed_multi_database_undo_is_in_both_databases_or_neither(tmp_path: Path):
    print(f"ATOLL_CRASH_SEED={SEED}")  # to replay a failure
    rng = random.Random(SEED)
    prepare(tmp_path)
    databases = open_collection(tmp_path)
    base = len(databases["a"].storage.transaction_log(None, 1000))
    close_collection(databases)
    acknowledged = caught_between = 0
    for kill in range(KILLS):
        seed = rng.randrange(1 << 30)
        acknowledged += len(run_until_killed(lambda fd: killed_flipper(tmp_path, fd, seed), rng, 0.3))
        raw = {name: raw_count(tmp_path / f"{name}.db") for name in "ab"}
        caught_between += raw["a"] != raw["b"]  # one file had committed the undo, the other not yet
        databases = open_collection(tmp_path)
        conn = databases["a"].open()
        try:
            counts = {name: len(db.storage.transaction_log(None, 100_000)) for name, db in databases.items()}
            state = {name: values(conn, name) for name in "ab"}
        finally:
            conn.close()
            close_collection(databases)
        assert counts["a"] == counts["b"], f"after kill {kill}: transactions {counts}"
        undos = counts["a"] - base
        assert undos >= acknowledged, f"after kill {kill}: {acknowledged} undos acknowledged, {undos} kept"
        expected = {1 if undos % 2 == 0 else 0}
        assert state == {"a": expected, "b": expected}, f"after kill {kill}: {state} after {undos} undos"
    assert acknowledged > KILLS  # the child did undo between kills
    print(f"{KILLS} kills, {acknowledged} undos acknowledged, {caught_between} kills between two finishes")


def raw_count(path: Path) -> int:
    """Transactions in a file as it is, before any atoll process settles it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM transactions").fetchone()[0]
    finally:
        conn.close()
