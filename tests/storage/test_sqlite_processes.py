"""Several processes on one SQLite file: they see each other's commits at their next
poll, never get the same oid, and serialize their commits without losing an update.

The workers use the storage protocol directly and are started with the ``spawn``
method, so that no SQLite state crosses a fork.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import pytest

from atoll.errors import ConflictError
from atoll.ids import ROOT_OID, u64, z64
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage
from storage_helpers import commit

WORKERS = 4
INCREMENTS = 250  # successful increments per worker
COUNTERS = 3  # few counters, so that workers collide often
NEW_EVERY = 10  # a worker also creates an object every NEW_EVERY increments
TIMEOUT = 120  # seconds before a stuck test gives up (never reached when things work)


def increment_worker(path: str, number: int, counters: list[bytes], start, results) -> None:
    """Increment random counters until INCREMENTS commits succeeded; report what it did."""
    storage = SQLiteStorage(path)
    view = storage.open_view()
    start.wait(TIMEOUT)  # a barrier: all workers begin together, so that they collide
    rng = random.Random(number)
    done = [0] * len(counters)
    created: dict[bytes, bytes] = {}
    conflicts = 0
    while sum(done) < INCREMENTS:
        which = rng.randrange(len(counters))
        oid = counters[which]
        view.poll()
        try:
            data, serial = view.load(oid)
            time.sleep(rng.random() * 0.002)  # "application work", widening the race
            writes = {oid: (serial, b"%d" % (int(data) + 1))}
            if sum(done) % NEW_EVERY == 0:
                new = storage.new_oid()
                writes[new] = (z64, b"worker %d object %d" % (number, u64(new)))
            commit(view, writes, TransactionMeta(user=f"worker{number}"))
        except ConflictError:
            conflicts += 1
            continue
        done[which] += 1
        for new_oid, (_, new_data) in writes.items():
            if new_oid != oid:
                created[new_oid] = new_data
    storage.close()
    results.put((number, done, created, conflicts))


def test_four_processes_increment_counters_without_losing_updates(tmp_path: Path):
    path = str(tmp_path / "counters.db")
    storage = SQLiteStorage(path)
    counters = [storage.new_oid() for _ in range(COUNTERS)]
    commit(storage.open_view(), {ROOT_OID: (z64, b"root"), **{oid: (z64, b"0") for oid in counters}})
    storage.close()

    context = multiprocessing.get_context("spawn")
    results, start = context.Queue(), context.Barrier(WORKERS)
    workers = [
        context.Process(target=increment_worker, args=(path, number, counters, start, results))
        for number in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=TIMEOUT) for _ in workers]
    print("conflicts per worker:", [c for *_, c in reports])  # shown with -s
    for worker in workers:
        worker.join(TIMEOUT)
        assert worker.exitcode == 0

    storage = SQLiteStorage(path)
    view = storage.open_view()
    totals = [sum(done[i] for _, done, _, _ in reports) for i in range(COUNTERS)]
    assert sum(totals) == WORKERS * INCREMENTS
    assert [int(view.load(oid)[0]) for oid in counters] == totals  # no lost update

    created = [oid for _, _, made, _ in reports for oid in made]
    assert len(created) == len(set(created))  # no oid handed to two processes
    assert not set(created) & set(counters) and ROOT_OID not in created
    everything = {oid: data for _, _, made, _ in reports for oid, data in made.items()}
    assert {oid: data for oid, (data, _) in view.load_many(created).items()} == everything

    tids = [t.tid for t in storage.iterator()]
    assert tids == sorted(tids) and len(tids) == len(set(tids)) == 1 + WORKERS * INCREMENTS
    storage.close()


def ping_pong_worker(path: str, oid: bytes, parity: int, rounds: int, results) -> None:
    """Wait (polling) until the shared value has this worker's parity, then add one."""
    storage = SQLiteStorage(path)
    view = storage.open_view()
    deadline = time.monotonic() + TIMEOUT
    seen = []
    for _ in range(rounds):
        while True:
            view.poll()
            data, serial = view.load(oid)
            if int(data) % 2 == parity:
                break
            if time.monotonic() > deadline:
                results.put(("timeout", seen))
                return
            time.sleep(0.001)
        seen.append(int(data))
        commit(view, {oid: (serial, b"%d" % (int(data) + 1))})  # only this worker writes now
    storage.close()
    results.put(("ok", seen))


def test_two_processes_see_each_others_commits_at_poll(tmp_path: Path):
    path = str(tmp_path / "pingpong.db")
    storage = SQLiteStorage(path)
    oid = storage.new_oid()
    commit(storage.open_view(), {oid: (z64, b"0")})
    storage.close()
    rounds = 25
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=ping_pong_worker, args=(path, oid, parity, rounds, results)) for parity in (0, 1)]
    for worker in workers:
        worker.start()
    reports = sorted(results.get(timeout=TIMEOUT) for _ in workers)
    for worker in workers:
        worker.join(TIMEOUT)
    assert [status for status, _ in reports] == ["ok", "ok"]
    assert sorted(value for _, seen in reports for value in seen) == list(range(2 * rounds))
    storage = SQLiteStorage(path)
    assert storage.open_view().load(oid)[0] == b"%d" % (2 * rounds)
    storage.close()


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    yield
    for child in multiprocessing.active_children():
        child.kill()
