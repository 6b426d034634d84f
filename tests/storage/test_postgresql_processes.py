"""PostgreSQLStorage across processes: concurrent committers lose no update, and a
process killed between PREPARE and COMMIT PREPARED is recovered by the next open."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import postgres_support  # noqa: E402
from postgres_support import make_storage, postgres_dsn  # noqa: E402

from atoll.ids import z64  # noqa: E402
from atoll.storage.base import TransactionMeta  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Increments the counter at the root N times, retrying on conflicts.
INCREMENT = """
import sys
from atoll.errors import ConflictError
from atoll.ids import z64
from atoll.storage.base import TransactionMeta
from atoll.storage.postgresql import PostgreSQLStorage

dsn, schema, keep_history, times = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
storage = PostgreSQLStorage(dsn, schema=schema, keep_history=keep_history)
view = storage.open_view()
conflicts = 0
for _ in range(times):
    while True:
        view.poll()
        data, serial = view.load(z64)
        view.tpc_begin(TransactionMeta(description="increment"))
        view.store(z64, serial, b"%d" % (int(data) + 1))
        try:
            view.tpc_vote()
        except ConflictError:
            view.tpc_abort()
            conflicts += 1
            continue
        view.tpc_finish()
        break
view.release()
storage.close()
print(conflicts)
"""

# Votes one collection commit over the schemas (the first decides, the others
# prepare), finishes the first ``finished`` of them, says so, and waits to be killed.
PREPARE_AND_HANG = """
import sys, time, uuid
from atoll.ids import z64
from atoll.storage.base import Member, TransactionMeta
from atoll.storage.postgresql import PostgreSQLStorage

dsn, finished, schemas = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
views, shared_id = [], uuid.uuid4().hex
storages = [PostgreSQLStorage(dsn, schema=schema) for schema in schemas]
members = [Member(str(i), storage.decision_home()) for i, storage in enumerate(storages)]
for i, storage in enumerate(storages):
    view = storage.open_view()
    view.tpc_begin(TransactionMeta(id=shared_id, members=members, order_key=str(i)))
    view.store(z64, view.load(z64)[1], b"from the killed process")
    views.append(view)
for view in views:
    view.tpc_vote()
for view in views[:finished]:
    view.tpc_finish()
print("ready", flush=True)
time.sleep(600)
"""


def run_python(code: str, *args: str, app: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC)
    dsn = postgres_dsn() + (f" application_name={app}" if app else "")
    return subprocess.Popen(
        [sys.executable, "-c", code, dsn, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def commit_root(storage, data: bytes) -> bytes:
    view = storage.open_view()
    view.tpc_begin(TransactionMeta())
    try:
        serial = view.load(z64)[1]
    except KeyError:
        serial = z64
    view.store(z64, serial, data)
    view.tpc_vote()
    tid = view.tpc_finish()
    view.release()
    return tid


def root_data(storage) -> bytes:
    view = storage.open_view()
    try:
        return view.load(z64)[0]
    finally:
        view.release()


@pytest.mark.parametrize("keep_history", [True, False], ids=["history", "history_free"])
def test_four_processes_incrementing_one_counter_lose_no_update(keep_history):
    storage = make_storage("counter", keep_history=keep_history)
    commit_root(storage, b"0")
    times = 15
    workers = [run_python(INCREMENT, storage.schema, "1" if keep_history else "0", str(times)) for _ in range(4)]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    assert root_data(storage) == b"%d" % (4 * times)
    tids = [record.tid for record in storage.iterator()]
    assert tids == sorted(set(tids))  # strictly increasing across processes
    if keep_history:
        assert len(tids) == 1 + 4 * times
    storage.close()


def kill_after_ready(worker: subprocess.Popen, app: str) -> None:
    """Wait for the worker's "ready", kill it, and wait until the server has ended
    its sessions (so their owner locks are gone)."""
    line = worker.stdout.readline()
    assert line.strip() == "ready", worker.stderr.read()
    worker.kill()
    worker.wait()
    with postgres_support.admin_connection() as conn:
        for _ in range(200):
            alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
            if alive.fetchone()[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"sessions of the killed process {app} did not end")


def prepared_gids(schema: str) -> list[str]:
    with postgres_support.admin_connection() as conn:
        rows = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"atoll|{schema}|%",))
        return [row[0] for row in rows]


def test_killed_between_prepare_and_commit_is_rolled_back_on_next_open():
    decider, storage = make_storage("killed_decider"), make_storage("killed_single")
    for each in (decider, storage):
        commit_root(each, b"before")
    app = f"atoll_kill_{uuid.uuid4().hex[:8]}"
    kill_after_ready(run_python(PREPARE_AND_HANG, "0", decider.schema, storage.schema, app=app), app)
    assert prepared_gids(decider.schema) == []  # the decider never prepares
    assert len(prepared_gids(storage.schema)) == 1  # left behind, holding the commit lock

    reopened = type(storage)(postgres_dsn(), schema=storage.schema)  # recovery runs on open
    try:
        assert prepared_gids(storage.schema) == []
        assert root_data(reopened) == root_data(decider) == b"before"  # nothing decided: rolled back
        commit_root(reopened, b"after")  # and the commit lock is free again
        assert root_data(reopened) == b"after"
    finally:
        reopened.close()
        storage.close()
        decider.close()


def test_multi_database_commit_killed_after_the_first_finish_commits_the_rest():
    first, second = make_storage("killed_multi_a"), make_storage("killed_multi_b")
    for storage in (first, second):
        commit_root(storage, b"before")
    app = f"atoll_kill_{uuid.uuid4().hex[:8]}"
    kill_after_ready(run_python(PREPARE_AND_HANG, "1", first.schema, second.schema, app=app), app)
    assert prepared_gids(first.schema) == [] and len(prepared_gids(second.schema)) == 1

    recovered = type(second)(postgres_dsn(), schema=second.schema)  # recovery runs on open
    try:
        # The decision was reached (the first participant committed): commit the second.
        assert prepared_gids(second.schema) == []
        assert root_data(first) == root_data(recovered) == b"from the killed process"
    finally:
        recovered.close()
        first.close()
        second.close()


def test_a_committer_blocked_by_a_crashed_prepare_recovers_it_and_goes_on():
    decider, storage = make_storage("killed_blocking_decider"), make_storage("killed_blocking", lock_wait=0.2)
    for each in (decider, storage):
        commit_root(each, b"before")
    app = f"atoll_kill_{uuid.uuid4().hex[:8]}"
    kill_after_ready(run_python(PREPARE_AND_HANG, "0", decider.schema, storage.schema, app=app), app)
    assert len(prepared_gids(storage.schema)) == 1
    commit_root(storage, b"after")  # waits lock_wait, recovers, commits
    assert prepared_gids(storage.schema) == [] and root_data(storage) == b"after"
    storage.close()
    decider.close()
