"""A PostgreSQL server restarted under a running application (issue 16).

The server is a private cluster (``tests/private_postgres.py``), never the shared
test server. Several connections commit, the server restarts while some of them
are in the middle of a transaction, and they commit again: each sees at most one
retryable error (:class:`~atoll.errors.ConnectionLostError`, a ConflictError), and
every acknowledged commit is there afterwards.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest
import transaction
from persistent.list import PersistentList

import atoll
from atoll.errors import ConflictError, ConnectionLostError

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for private_postgres

from private_postgres import private_cluster  # noqa: E402

WORKERS = 3
COMMITS = 5  # before the restart, and again after it


@pytest.fixture(scope="module")
def cluster():
    with private_cluster() as made:
        yield made


def test_postgresql_restart_under_a_running_application(cluster):
    from atoll.storage.postgresql import PostgreSQLStorage

    storage = PostgreSQLStorage(cluster.dsn, schema="restart_app")
    db = atoll.DB(storage)
    try:
        with db.transaction() as conn:
            for i in range(WORKERS):
                conn.root()[f"w{i}"] = PersistentList()
        in_flight = threading.Barrier(WORKERS + 1)  # every worker has a transaction open
        restarted = threading.Event()
        acknowledged: dict[int, list[int]] = {i: [] for i in range(WORKERS)}
        retries: dict[int, list[str]] = {i: [] for i in range(WORKERS)}
        failures: list[BaseException] = []

        def commit(conn, tm, i: int, value: int) -> None:
            for _ in range(3):
                try:
                    tm.begin()
                    conn.root()[f"w{i}"].append(value)
                    conn.add(PersistentList([value]))  # a new object: new_oid after the restart
                    tm.commit()
                    break
                except ConflictError as e:
                    retries[i].append(type(e).__name__)
                    tm.abort()
            else:
                raise AssertionError(f"worker {i}: three retryable errors in a row: {retries[i]}")
            acknowledged[i].append(value)

        def worker(i: int) -> None:
            tm = transaction.TransactionManager()
            conn = db.open(transaction_manager=tm)
            try:
                for n in range(COMMITS):
                    commit(conn, tm, i, n + 1)
                # Start a transaction and hold it open across the restart.
                tm.begin()
                len(conn.root()[f"w{i}"])
                in_flight.wait(timeout=60)
                restarted.wait(timeout=60)
                conn.root()[f"w{i}"].append(0)
                try:
                    tm.commit()
                    acknowledged[i].append(0)
                except ConflictError as e:
                    retries[i].append(type(e).__name__)
                    tm.abort()
                for n in range(COMMITS, 2 * COMMITS):
                    commit(conn, tm, i, n + 1)
            except BaseException as e:  # reported by the main thread
                failures.append(e)
                in_flight.abort()
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        in_flight.wait(timeout=60)
        cluster.restart()
        restarted.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
        # The transactions open across the restart each met the lost session once.
        assert any(retries.values()), "the restart was not noticed: the test did not exercise it"
        for i in range(WORKERS):
            assert len(retries[i]) <= 1, (i, retries[i])
            assert set(retries[i]) <= {"ConnectionLostError"}, retries[i]
        # Nothing acknowledged is lost, seen from a new storage (new sessions).
        db.close()
        storage = PostgreSQLStorage(cluster.dsn, schema="restart_app")
        db = atoll.DB(storage)
        with db.transaction() as conn:
            for i in range(WORKERS):
                stored = [v for v in conn.root()[f"w{i}"] if v >= 0]
                assert stored == acknowledged[i], (i, stored, acknowledged[i])
        assert sum(len(v) for v in acknowledged.values()) == WORKERS * (2 * COMMITS + 1) - sum(
            1 for i in range(WORKERS) if 0 not in acknowledged[i]
        )
    finally:
        db.close()


def test_postgresql_admin_session_reconnects_after_a_drop(cluster, caplog):
    """new_oid, history, len and recovery work again after the server restarted,
    without reopening the storage (they used to fail until reopened)."""
    from atoll.storage.postgresql import PostgreSQLStorage
    from atoll.storage.base import TransactionMeta
    from atoll.ids import z64

    storage = PostgreSQLStorage(cluster.dsn, schema="restart_admin")
    try:
        view = storage.open_view()
        view.tpc_begin(TransactionMeta())
        view.store(z64, z64, b"root")
        view.tpc_vote()
        view.tpc_finish()
        view.release()
        cluster.restart()
        oids = {storage.new_oid() for _ in range(250)}  # more than one block: two round trips
        assert len(oids) == 250
        assert len(storage) == 1
        assert storage.history(z64)[0].size == 4
        assert storage.recover() == {}
        view = storage.open_view()  # the pooled session was lost too
        assert view.load(z64)[0] == b"root"
        view.close()
    finally:
        storage.close()


def test_tpc_finish_completes_a_commit_whose_session_was_lost(cluster, caplog, tmp_path):
    """The session of a collection member dies between its prepare and its finish:
    tpc_finish commits the prepared transaction from a new session and returns, as
    the commit is durable (its decider, an SQLite file here, decided it)."""
    import psycopg

    from atoll.ids import z64
    from atoll.storage.base import Member, TransactionMeta
    from atoll.storage.postgresql import PostgreSQLStorage
    from atoll.storage.sqlite import SQLiteStorage

    decider = SQLiteStorage(tmp_path / "decider.db")
    storage = PostgreSQLStorage(cluster.dsn, schema="restart_finish")
    members = [Member("0", decider.decision_home()), Member("1", storage.decision_home())]
    try:
        first, view = decider.open_view(), storage.open_view()
        for order, each in enumerate((first, view)):
            each.tpc_begin(TransactionMeta(id="shared", members=members, order_key=str(order)))
            each.store(z64, z64, b"root")
        first.tpc_vote()
        view.tpc_vote()
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:  # kill only that session
            pid = view._load_session.conn.info.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        first.tpc_finish()  # the decision
        with caplog.at_level(logging.WARNING, logger="atoll.storage.postgresql"):
            tid = view.tpc_finish()
        assert "committed transaction" in caplog.text
        assert storage.last_transaction() == tid
        fresh = storage.open_view()
        assert fresh.load(z64) == (b"root", tid)
        fresh.close()
        view.close()
        first.close()
    finally:
        storage.close()
        decider.close()


def test_a_lone_commit_whose_session_was_lost_before_commit_did_not_happen(cluster):
    """A commit of one storage alone is one transaction and a plain COMMIT: the
    session dies before it, the server rolls it back, and tpc_finish says so."""
    import psycopg

    from atoll.errors import ConnectionLostError
    from atoll.ids import z64
    from atoll.storage.base import TransactionMeta
    from atoll.storage.postgresql import PostgreSQLStorage

    storage = PostgreSQLStorage(cluster.dsn, schema="restart_lone")
    try:
        view = storage.open_view()
        view.tpc_begin(TransactionMeta())
        view.store(z64, z64, b"root")
        view.tpc_vote()
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (view._load_session.conn.info.backend_pid,))
        with pytest.raises(ConnectionLostError, match="did not commit"):
            view.tpc_finish()
        assert storage.last_transaction() == z64
        view.close()
    finally:
        storage.close()
