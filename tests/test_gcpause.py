"""The collector is off while a commit serializes, writes and finishes, and comes back
as the application left it."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import transaction
from persistent import Persistent

import atoll
from atoll import gcpause
from helpers import Item


class Probe(Persistent):
    """Records whether the collector was on whenever it is pickled."""

    seen: list[bool] = []

    def __getstate__(self) -> dict:
        Probe.seen.append(gc.isenabled())
        return super().__getstate__()


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_turns_the_collector_off_and_back_on():
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
    assert gc.isenabled()


def test_paused_leaves_a_collector_the_application_turned_off_off():
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


def test_paused_restores_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with gcpause.paused():
            1 / 0
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_restore_once_both_end():
    inside, release = threading.Event(), threading.Event()

    def other():
        with gcpause.paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    with gcpause.paused():
        pass
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    thread.join()
    assert gc.isenabled()


def test_a_commit_serializes_with_the_collector_off_and_restores_it(tmp_path):
    db = atoll.DB(str(tmp_path / "app.db"))
    Probe.seen = []
    with db.transaction() as conn:
        conn.root()["p"] = Probe()
    assert Probe.seen and not any(Probe.seen)
    assert gc.isenabled()
    db.close()


def test_a_failing_commit_restores_the_collector():
    db = atoll.DB(None)
    conn = db.open()
    conn.root()["bad"] = Unpicklable()
    with pytest.raises(TypeError):
        transaction.commit()
    transaction.abort()
    assert gc.isenabled()
    db.close()


class Unpicklable(Persistent):
    """Its state holds a lock, which pickle refuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_resumed_lets_the_collector_run_inside_a_pause_and_pauses_again():
    with gcpause.paused():
        with gcpause.resumed():
            assert gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resumed_outside_a_pause_changes_nothing():
    with gcpause.resumed():
        assert gc.isenabled()
    gc.disable()
    with gcpause.resumed():
        assert not gc.isenabled()  # the application's choice stays


def test_resumed_in_one_thread_keeps_another_threads_pause():
    inside, release = threading.Event(), threading.Event()

    def other():
        with gcpause.paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    with gcpause.paused():
        with gcpause.resumed():
            assert not gc.isenabled()  # the other thread still serializes
    release.set()
    thread.join()
    assert gc.isenabled()


# -- a threaded server with overlapping commits ----------------------------------------------


class _Step:
    """A data manager that marks a step of its transaction's commit and may hold it
    there; ``sort_key`` places it before or after the connection's steps."""

    def __init__(self, sort_key: str, at: str, hold: threading.Event | None = None) -> None:
        self.sort_key, self.at, self.hold = sort_key, at, hold
        self.reached = threading.Event()

    def sortKey(self) -> str:
        return self.sort_key

    def _step(self, name: str) -> None:
        if name == self.at:
            self.reached.set()
            if self.hold is not None:
                assert self.hold.wait(10), "the test never released the commit"

    def abort(self, txn) -> None:
        pass

    def tpc_begin(self, txn) -> None:
        pass

    def commit(self, txn) -> None:
        self._step("commit")

    def tpc_vote(self, txn) -> None:
        self._step("vote")

    def tpc_finish(self, txn) -> None:
        pass

    def tpc_abort(self, txn) -> None:
        pass


def _collections_while(wait_until_blocked) -> int:
    """Young collections seen while the main thread allocates cycles, once the
    other threads are where ``wait_until_blocked`` waits for."""
    seen = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    wait_until_blocked()
    assert gc.isenabled(), "the collector is off while a commit waits"
    gc.callbacks.append(count)
    try:
        for _ in range(50_000):
            cycle: list = []
            cycle.append(cycle)
    finally:
        gc.callbacks.remove(count)
    return len(seen)


def _commit_in_thread(db, change, *steps: _Step) -> tuple[threading.Thread, list]:
    errors: list = []

    def run():
        manager = transaction.TransactionManager()
        conn = db.open(manager)
        try:
            change(conn.root())
            for step in steps:
                manager.get().join(step)
            manager.commit()
        except BaseException as exc:  # reported to the test
            errors.append(exc)
            manager.abort()
        finally:
            conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.fixture(params=["memory", "sqlite"])
def server_db(request, tmp_path):
    db = atoll.DB(None if request.param == "memory" else str(tmp_path / "app.db"))
    with db.transaction() as conn:
        conn.root()["a"], conn.root()["b"] = Item(0), Item(0)
    yield db
    db.close()


def test_collector_runs_while_a_commit_waits_for_the_commit_lock(server_db):
    release = threading.Event()
    holding = _Step("~", "vote", release)  # votes after A's connection: A holds the lock
    a, a_errors = _commit_in_thread(server_db, lambda root: setattr(root["a"], "value", 1), holding)
    try:
        assert holding.reached.wait(10)
        voting = _Step("", "vote")  # votes before B's connection, which then waits
        b, b_errors = _commit_in_thread(server_db, lambda root: setattr(root["b"], "value", 1), voting)

        def b_waits():
            assert voting.reached.wait(10)
            time.sleep(0.3)
            assert b.is_alive()

        assert _collections_while(b_waits) > 0
    finally:
        release.set()
    a.join(10)
    b.join(10)
    assert not a_errors and not b_errors
    with server_db.transaction() as conn:
        assert conn.root()["a"].value == conn.root()["b"].value == 1
    assert gc.isenabled()


def test_collector_runs_while_a_serializing_commit_waits_for_new_oids(tmp_path):
    db = atoll.DB(str(tmp_path / "app.db"))
    with db.transaction() as conn:
        conn.root()["a"], conn.root()["b"] = Item(0), Item(0)
    release = threading.Event()
    holding = _Step("~", "vote", release)
    a, a_errors = _commit_in_thread(db, lambda root: setattr(root["a"], "value", 1), holding)
    try:
        assert holding.reached.wait(10)
        committing, serialized = _Step("", "commit"), _Step("~", "commit")

        def many_new_objects(root):  # more than a block of oids: B reserves more
            root["b"].value = [Item(i) for i in range(5000)]

        b, b_errors = _commit_in_thread(db, many_new_objects, committing, serialized)

        def b_waits_in_serialization():
            assert committing.reached.wait(10)
            time.sleep(0.3)
            assert not serialized.reached.is_set()  # B's connection still serializes

        assert _collections_while(b_waits_in_serialization) > 0
    finally:
        release.set()
    a.join(10)
    b.join(10)
    assert not a_errors and not b_errors
    with db.transaction() as conn:
        assert len(conn.root()["b"].value) == 5000 and conn.root()["a"].value == 1
    db.close()


def _serializing_commit_waits_for_an_oid(db, hold_oids) -> None:
    """B serializes new objects while ``hold_oids()`` (a context manager) keeps its
    storage from handing out oids: the collector must run while B waits."""
    with db.transaction() as conn:
        conn.root()["b"] = Item(0)
    go = threading.Event()
    committing, serialized = _Step("", "commit", go), _Step("~", "commit")
    b, b_errors = _commit_in_thread(db, lambda root: setattr(root["b"], "value", [Item(1)]), committing, serialized)
    try:
        assert committing.reached.wait(10)  # B is open, loaded, and about to serialize
        with hold_oids():
            go.set()

            def b_waits_in_serialization():
                time.sleep(0.3)
                assert not serialized.reached.is_set()  # B's connection still serializes

            assert _collections_while(b_waits_in_serialization) > 0
    finally:
        go.set()
    b.join(10)
    assert not b_errors
    with db.transaction() as conn:
        assert conn.root()["b"].value[0].value == 1
    assert gc.isenabled()


def _held_in_thread(lock):
    """A context manager holding ``lock`` in another thread (as a pack would)."""
    from contextlib import contextmanager

    @contextmanager
    def hold():
        taken, release = threading.Event(), threading.Event()

        def run():
            with lock:
                taken.set()
                release.wait(10)

        thread = threading.Thread(target=run)
        thread.start()
        assert taken.wait(10)
        try:
            yield
        finally:
            release.set()
            thread.join(10)

    return hold


def test_collector_runs_while_a_memory_commit_waits_for_the_storage_lock_for_an_oid():
    db = atoll.DB(None)
    try:
        _serializing_commit_waits_for_an_oid(db, _held_in_thread(db.storage._lock))
    finally:
        db.close()


def test_collector_runs_while_a_postgresql_commit_waits_for_the_storage_lock_for_an_oid():
    from postgres_support import make_storage

    db = atoll.DB(make_storage("gcpause_lock"))
    try:
        _serializing_commit_waits_for_an_oid(db, _held_in_thread(db.storage._lock))
    finally:
        db.close()


def test_collector_runs_while_a_postgresql_commit_waits_on_the_server_for_oids():
    from contextlib import contextmanager

    from postgres_support import admin_connection, make_storage

    storage = make_storage("gcpause_nextval")
    db = atoll.DB(storage)

    @contextmanager
    def sequence_locked():
        # nextval() waits for a session that altered the sequence (its lock is held
        # until that transaction ends; LOCK TABLE refuses sequences).
        storage._next_oid = storage._oid_limit  # the next oid needs a new block
        with admin_connection() as conn:
            conn.execute("BEGIN")
            increment = conn.execute(
                "SELECT increment_by FROM pg_sequences WHERE schemaname = %s AND sequencename = 'oid_seq'",
                (storage.schema,),
            ).fetchone()[0]
            conn.execute(f'ALTER SEQUENCE "{storage.schema}".oid_seq INCREMENT BY {increment}')
            try:
                yield
            finally:
                conn.execute("ROLLBACK")

    try:
        _serializing_commit_waits_for_an_oid(db, sequence_locked)
    finally:
        db.close()
