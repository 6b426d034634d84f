"""Collections of every mix of durable storages, killed with SIGKILL at every step of
the commit protocol again and again, never keep a transaction in one database and
not in the other.

A forked child commits transaction after transaction through one connection group:
transaction ``seq`` sets ``root.seq = seq`` in both databases, and the child reports
``seq`` once ``transaction.commit()`` returned. Kill after kill, the child dies in
turn right after each step of the protocol: after the decider's vote, after the
member's prepare, after the decider's commit (the decision) and before the member's
finish, after the member's finish; and every fifth time at a random moment, killed by
the parent. It commits a random number of transactions first. After each kill the parent opens ONE of the two databases alone, chosen at
random (which settles what the child left there, asking the other database for the
decision), reads its ``seq``, then opens the other one alone and reads its ``seq``:
both must be equal, and none older than acknowledged.

Mixes: two SQLite files; SQLite + PostgreSQL; two PostgreSQL databases; two schemas
of one PostgreSQL database. ``ATOLL_CRASH_KILLS`` sets the kills per mix (default
:data:`KILLS`, kept small for CI); ``ATOLL_CRASH_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from pathlib import Path

import pytest
import transaction

import atoll
from atoll.storage.sqlite import SQLiteStorage, SQLiteView
from kill_support import run_until_it_dies, run_until_killed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import postgres_support  # noqa: E402

try:  # imported here, once: the forked children would each import it again
    from atoll.storage.postgresql import PostgreSQLView
except ImportError:  # no psycopg: the PostgreSQL mixes skip
    PostgreSQLView = None  # type: ignore[assignment,misc]

SEED = int(os.environ.get("ATOLL_CRASH_SEED", "0")) or random.randrange(1 << 30)
KILLS = int(os.environ.get("ATOLL_CRASH_KILLS", "0")) or 5  # one round per step: CI stays quick
STEPS = 4  # tpc_vote of the first and second storage to vote, then their tpc_finish


class Member:
    """One database of the collection: an SQLite file or a PostgreSQL schema."""

    def __init__(self, kind: str, where: str, schema: str = "") -> None:
        self.kind, self.where, self.schema = kind, where, schema

    def open(self, app: str = ""):
        if self.kind == "sqlite":
            return SQLiteStorage(self.where)
        from atoll.storage.postgresql import PostgreSQLStorage

        dsn = self.where + (f" application_name={app}" if app else "")
        return PostgreSQLStorage(dsn, schema=self.schema, lock_wait=0.5)

    def unsettled(self) -> bool:
        """Whether a part of a commit waits here for settling."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(f"file:{self.where}?mode=ro", uri=True)
            try:
                return conn.execute("SELECT count(*) FROM commit_pending").fetchone()[0] > 0
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.where, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE %s", (f"atoll|{self.schema}|%",))
            return rows.fetchone()[0] > 0

    def __repr__(self) -> str:
        return f"{self.kind}:{self.where}{'/' + self.schema if self.schema else ''}"


def open_collection(members: list[Member], app: str = "") -> tuple[dict, atoll.Connection]:
    databases: dict = {}
    for name, member in zip("ab", members):
        atoll.DB(member.open(app), database_name=name, databases=databases)
    return databases, databases["a"].open()


def close_collection(databases: dict, conn) -> None:
    transaction.abort()
    conn.close()
    for db in databases.values():
        db.close()


def read_seq(member: Member) -> int:
    """Open the member alone (settling what a crash left there) and read its seq."""
    db = atoll.DB(member.open())
    try:
        conn = db.open()
        try:
            return conn.root.seq
        finally:
            transaction.abort()
            conn.close()
    finally:
        db.close()


def die_after(steps: int) -> None:
    """Make the process kill itself right after its ``steps``-th vote or finish."""
    views = [SQLiteView] + ([PostgreSQLView] if PostgreSQLView is not None else [])
    done = [0]
    for view in views:
        for step in ("tpc_vote", "tpc_finish"):
            original = getattr(view, step)

            def dying(self, *args, _original=original, **kwargs):
                result = _original(self, *args, **kwargs)
                done[0] += 1
                if done[0] == steps:
                    os.kill(os.getpid(), signal.SIGKILL)
                return result

            setattr(view, step, dying)


def child(members: list[Member], report: int, steps: int, app: str) -> None:
    """Commit forever, or until the ``steps``-th step when ``steps`` is not 0."""
    if steps:
        die_after(steps)
    databases, conn = open_collection(members, app)
    other = conn.get_connection("b")
    while True:
        seq = conn.root.seq + 1
        conn.root.seq = seq
        other.root.seq = seq
        transaction.commit()
        os.write(report, b"%d\n" % seq)


def wait_for_sessions_to_end(app: str) -> None:
    """The killed child's PostgreSQL sessions end a moment after it: recovery
    leaves a prepared transaction alone while its owner's session lives."""
    import psycopg

    with psycopg.connect(postgres_support.postgres_dsn(), autocommit=True) as conn:
        for _ in range(400):
            alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
            if alive.fetchone()[0] == 0:
                return
            time.sleep(0.025)
    raise AssertionError(f"sessions of the killed process {app} did not end")


def run_kills(members: list[Member], caplog: pytest.LogCaptureFixture) -> None:
    print(f"ATOLL_CRASH_SEED={SEED} ATOLL_CRASH_KILLS={KILLS} members={members}")  # to replay a failure
    rng = random.Random(SEED)
    databases, conn = open_collection(members)
    conn.root.seq = 0
    conn.get_connection("b").root.seq = 0
    transaction.commit()
    close_collection(databases, conn)
    uses_postgres = any(m.kind == "postgresql" for m in members)

    acknowledged, settled = 0, 0
    for kill in range(KILLS):
        step = kill % (STEPS + 1)  # 0: killed by the parent at a random moment
        steps = (rng.randrange(4) * STEPS + step) if step else 0
        app = f"atoll_crash_{uuid.uuid4().hex[:8]}"
        if step == 0:
            lines = run_until_killed(lambda fd: child(members, fd, 0, app), rng, 1.0)
        else:
            lines = run_until_it_dies(lambda fd: child(members, fd, steps, app), 120.0)
        seqs = [int(line) for line in lines]
        acknowledged = max([acknowledged, *seqs])
        if uses_postgres:
            wait_for_sessions_to_end(app)
        left = any(m.unsettled() for m in members)
        settled += left
        first = rng.randrange(2)  # whichever member is opened first settles alone
        seen = {}
        caplog.clear()
        with caplog.at_level("WARNING", logger="atoll"):
            for index in (first, 1 - first):
                seen[index] = read_seq(members[index])
        if left:  # the recovery says what it did, in one line
            said = [r.getMessage() for r in caplog.records if "process that stopped" in r.getMessage()]
            assert len(said) == 1, f"after kill {kill}: recovery logged {said!r}"
        a, b = seen[0], seen[1]
        assert a == b, f"after kill {kill} (opened {'ab'[first]} first): database a holds transaction {a}, b holds {b}"
        assert a >= acknowledged, f"after kill {kill}: acknowledged transaction {acknowledged} lost"
        assert not any(m.unsettled() for m in members), f"after kill {kill}: a part is still unsettled"
    print(f"{KILLS} kills, {acknowledged} transactions acknowledged, {settled} kills left a part to settle")
    assert acknowledged > 0  # the child did commit between kills
    if KILLS >= STEPS + 1:
        assert settled > 0  # some kills fell between the member's prepare and its finish


def test_two_sqlite_files(tmp_path: Path, caplog):
    run_kills([Member("sqlite", str(tmp_path / name)) for name in ("a.db", "b.db")], caplog)


@pytest.fixture
def pg_schema():
    """A fresh schema name in the test database (dropped at the end)."""
    postgres_support.require_postgres()
    made: list[str] = []

    def make() -> str:
        schema = f"atoll_test_crash_{uuid.uuid4().hex[:8]}"
        made.append(schema)
        return schema

    yield make
    for schema in made:
        postgres_support.drop_schema(schema)


@pytest.fixture
def second_database():
    """The DSN of a PostgreSQL database of its own on the test server (dropped at the end)."""
    postgres_support.require_postgres()
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"atoll_test_crash_{uuid.uuid4().hex[:8]}"
    with postgres_support.admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(postgres_support.postgres_dsn())
    params["dbname"] = name
    dsn = make_conninfo(**params)
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()").fetchall():
            conn.execute(f"ROLLBACK PREPARED '{gid}'")
    with postgres_support.admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sqlite_and_postgresql(tmp_path: Path, pg_schema, caplog):
    dsn = postgres_support.postgres_dsn()
    run_kills([Member("sqlite", str(tmp_path / "a.db")), Member("postgresql", dsn, pg_schema())], caplog)


def test_two_postgresql_databases(pg_schema, second_database, caplog):
    dsn = postgres_support.postgres_dsn()
    run_kills([Member("postgresql", dsn, pg_schema()), Member("postgresql", second_database, "atoll")], caplog)


def test_two_schemas_of_one_postgresql_database(pg_schema, caplog):
    dsn = postgres_support.postgres_dsn()
    run_kills([Member("postgresql", dsn, pg_schema()), Member("postgresql", dsn, pg_schema())], caplog)
