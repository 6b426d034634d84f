"""A collection of two SQLite databases, killed with SIGKILL mid-commit again and
again, never shows a transaction in one database and not in the other.

A forked child commits transaction after transaction through one connection group:
transaction ``seq`` sets ``root.seq = seq`` in both databases, and the child reports
``seq`` once ``transaction.commit()`` returned. The parent kills it at a random time;
besides, the child kills itself between the two databases' finishes at some
commits, the moment a naive commit would leave them apart. After each kill the
parent reopens the collection (which settles what the child left) and checks both
databases hold the same ``seq``, none older than acknowledged.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from pathlib import Path

import transaction

import atoll
from atoll.storage import sqlite_prepared as prepared
from atoll.storage.sqlite import SQLiteStorage, SQLiteView
from kill_support import run_until_killed

SEED = int(os.environ.get("ATOLL_CRASH_SEED", "0")) or random.randrange(1 << 30)
KILLS = 60
DIE_BETWEEN_FINISHES = 0.05  # chance per commit that the child dies between its two finishes


def open_collection(paths: list[str]) -> tuple[dict, atoll.Connection]:
    databases: dict = {}
    for name, path in zip("ab", paths):
        atoll.DB(SQLiteStorage(path), database_name=name, databases=databases)
    return databases, databases["a"].open()


def close_collection(databases: dict, conn) -> None:
    transaction.abort()
    conn.close()
    for db in databases.values():
        db.close()


def child(paths: list[str], report: int, seed: int) -> None:
    """Commit forever; die between the two finishes now and then."""
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
    databases, conn = open_collection(paths)
    other = conn.get_connection("b")
    while True:
        seq = conn.root.seq + 1
        conn.root.seq = seq
        other.root.seq = seq
        transaction.commit()
        os.write(report, b"%d\n" % seq)


def unsettled(path: str) -> bool:
    """Whether the file holds a prepared commit that its own transactions lack."""
    commit = prepared.read(prepared.prepared_path(path))
    if commit is None:
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM transactions WHERE tid = ?", (commit.tid,)).fetchone() is None
    finally:
        conn.close()


def test_killed_collection_commits_stay_whole_in_both_databases(tmp_path: Path):
    print(f"ATOLL_CRASH_SEED={SEED}")  # to replay a failure
    rng = random.Random(SEED)
    paths = sorted(str(tmp_path / name) for name in ("a.db", "b.db"))
    databases, conn = open_collection(paths)
    conn.root.seq = 0
    conn.get_connection("b").root.seq = 0
    transaction.commit()
    close_collection(databases, conn)

    acknowledged, settled_by_reopening = 0, 0
    for kill in range(KILLS):
        seed = rng.randrange(1 << 30)
        seqs = [int(line) for line in run_until_killed(lambda fd: child(paths, fd, seed), rng, 0.1)]
        acknowledged = max([acknowledged, *seqs])
        settled_by_reopening += any(unsettled(path) for path in paths)

        databases, conn = open_collection(paths)
        try:
            a, b = conn.root.seq, conn.get_connection("b").root.seq
        finally:
            close_collection(databases, conn)
        assert a == b, f"after kill {kill}: database a holds transaction {a}, b holds {b}"
        assert a >= acknowledged, f"after kill {kill}: acknowledged transaction {acknowledged} lost"
        assert not any(os.path.exists(prepared.prepared_path(p)) for p in paths)
    assert acknowledged > KILLS  # the child did commit between kills
    assert settled_by_reopening > 0  # some kills fell between the two finishes
