"""Robustness of the PostgreSQL storage (issue 16), on the shared test server: each
test has its own schema and ends only its own sessions. (Server restarts are in
test_postgresql_restart.py, on a private cluster.)"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from atoll.errors import CorruptRecordError, LockTimeoutError
from atoll.ids import ROOT_OID, p64, z64
from atoll.storage import postgresql as pg
from atoll.storage.base import TransactionMeta
from storage_helpers import commit

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for postgres_support

from postgres_support import admin_connection, make_storage  # noqa: E402


def test_postgresql_damaged_record_is_reported_with_database_oid_and_tid(request):
    storage = make_storage(request.node.name)
    try:
        view = storage.open_view()
        tid = commit(view, {ROOT_OID: (z64, b"root"), p64(1): (z64, b"one")})
        with admin_connection() as admin:
            admin.execute(f'UPDATE "{storage.schema}".object_state SET state = %s WHERE zoid = 1', (b"0ne",))
        storage._records.clear()
        fresh = storage.open_view()
        with pytest.raises(CorruptRecordError) as caught:
            fresh.load(p64(1))
        assert (caught.value.database, caught.value.oid, caught.value.tid) == (storage.name, p64(1), tid)
        with pytest.raises(CorruptRecordError):
            fresh.load_many([p64(1)])
        assert fresh.load(ROOT_OID) == (b"root", tid)
        assert [(d.oid, d.tid) for d in storage.verify()] == [(p64(1), tid)]
        fresh.close()
    finally:
        storage.close()


def test_postgresql_schema_without_checksums_still_opens(request):
    storage = make_storage(request.node.name)
    schema = storage.schema
    try:
        tid = commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
    finally:
        storage.close()
    with admin_connection() as admin:  # as atoll wrote it before checksums (version 1)
        admin.execute(f'ALTER TABLE "{schema}".object_state DROP COLUMN checksum')
        admin.execute(f'DROP TABLE "{schema}".commit_decisions, "{schema}".decision_homes')
        admin.execute(f"UPDATE \"{schema}\".info SET value = '1' WHERE key = 'schema_version'")
    reader = pg.PostgreSQLStorage(storage._dsn, schema=schema, read_only=True)
    try:
        assert reader.open_view().load(ROOT_OID) == (b"root", tid)
        assert reader.verify() == []
    finally:
        reader.close()
    writer = pg.PostgreSQLStorage(storage._dsn, schema=schema)  # upgrades the schema
    try:
        view = writer.open_view()
        commit(view, {p64(1): (z64, b"checked")})
        assert view.load(ROOT_OID) == (b"root", tid)
        assert writer.verify() == []
    finally:
        writer.close()


def test_postgresql_commit_lock_wait_ends_in_a_clear_error(request):
    storage = make_storage(request.node.name, commit_lock_timeout=0.5, lock_wait=0.2)
    try:
        commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
        holder, waiter = storage.open_view(), storage.open_view()
        holder.tpc_begin(TransactionMeta())
        holder.store(p64(1), z64, b"a")
        holder.tpc_vote()  # holds the commit lock (its session is alive: not recovered)
        waiter.tpc_begin(TransactionMeta())
        waiter.store(p64(2), z64, b"b")
        with pytest.raises(LockTimeoutError, match="commit lock within 0.5 s"):
            waiter.tpc_vote()
        waiter.tpc_abort()
        holder.tpc_finish()
        commit(waiter, {p64(2): (z64, b"b")})
    finally:
        storage.close()


def test_postgresql_tpc_finish_never_raises_when_housekeeping_fails(request, monkeypatch, caplog):
    storage = make_storage(request.node.name)
    try:
        monkeypatch.setattr(pg, "PRUNE_EVERY", 1)

        def broken() -> None:
            raise pg.StorageError("the server went away")

        monkeypatch.setattr(storage, "housekeeping", broken)
        view = storage.open_view()
        with caplog.at_level(logging.WARNING, logger="atoll.storage.postgresql"):
            tid = commit(view, {ROOT_OID: (z64, b"root")})
        assert "housekeeping after a commit failed" in caplog.text
        assert storage.last_transaction() == tid
    finally:
        storage.close()


def test_postgresql_history_free_database_stays_bounded_without_a_pack(request, monkeypatch):
    monkeypatch.setattr(pg, "PRUNE_EVERY", 50)
    storage = make_storage(request.node.name, keep_history=False)
    try:
        view = storage.open_view()
        serial = commit(view, {ROOT_OID: (z64, b"root")})
        for n in range(200):
            view.poll()
            serial = commit(view, {ROOT_OID: (serial, b"root %d" % n)})
        rows = storage._admin_call(lambda conn: conn.execute(storage._sql.COUNT_TRANSACTIONS).fetchone()[0])
        assert rows <= 51
    finally:
        storage.close()


def test_postgresql_recovery_is_logged_on_the_next_open(request, caplog, tmp_path):
    """A process stops between a collection member's prepare and its finish, before
    the decider decided: the next open rolls the prepared transaction back and says
    so in one log line."""
    from atoll.storage.base import Member
    from atoll.storage.sqlite import SQLiteStorage

    decider = SQLiteStorage(tmp_path / "decider.db")
    storage = make_storage(request.node.name)
    members = [Member("0", decider.decision_home()), Member("1", storage.decision_home())]
    try:
        commit(storage.open_view(), {ROOT_OID: (z64, b"root")})
        first, view = decider.open_view(), storage.open_view()
        for order, each in enumerate((first, view)):
            each.tpc_begin(TransactionMeta(id="never decided", members=members, order_key=str(order)))
            each.store(p64(1), z64, b"never finished")
        first.tpc_vote()
        view.tpc_vote()  # prepared
        with admin_connection() as admin:  # the member's session dies (this test's own)
            admin.execute("SELECT pg_terminate_backend(%s)", (view._load_session.conn.info.backend_pid,))
        first.tpc_abort()  # the decider never decides
        with caplog.at_level(logging.WARNING, logger="atoll.storage.postgresql"):
            other = pg.PostgreSQLStorage(storage._dsn, schema=storage.schema)
        lines = [r.getMessage() for r in caplog.records if "prepared transaction" in r.getMessage()]
        assert len(lines) == 1 and "rolled back" in lines[0] and storage.schema in lines[0]
        other.close()
        first.close()
    finally:
        storage.close()
        decider.close()
