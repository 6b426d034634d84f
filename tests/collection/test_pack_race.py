"""A collection-wide pack racing with processes that commit: nothing they wrote is lost.

Worker processes commit as fast as they can to a collection of two databases: each
transaction creates an object in ``b`` that only ``a`` refers to, and moves an
older object from one container to another (so objects change the path that reaches
them while the pack walks). Meanwhile this process packs the collection over and
over, as of "now". At the end every object a worker created is still reachable and
loads, and ``check`` finds nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time

import pytest
import transaction
from persistent.mapping import PersistentMapping

import atoll
import atoll.collection
from atoll.errors import ConflictError
from helpers import Item

WORKERS = 2
SECONDS = float(os.environ.get("ATOLL_PACK_RACE_SECONDS", "2"))


def open_collection(spec: dict) -> dict:

    databases: dict = {}
    for name, (kind, where, keep_history) in spec.items():
        if kind == "sqlite":
            from atoll.storage.sqlite import SQLiteStorage

            storage = SQLiteStorage(where, keep_history=keep_history)
        else:
            from atoll.storage.postgresql import PostgreSQLStorage
            import postgres_support

            storage = PostgreSQLStorage(postgres_support.postgres_dsn(), schema=where, keep_history=keep_history)
        atoll.DB(storage, database_name=name, databases=databases)
    return databases


def worker(spec: dict, number: int, stop_at: float, results) -> None:
    databases = open_collection(spec)
    tm = transaction.TransactionManager()
    conn = databases["a"].open(tm)
    rng = random.Random(number)
    created = 0
    try:
        while time.time() < stop_at:
            try:
                root = conn.root()
                mine = [root[f"w{number}-{i}"] for i in range(2)]
                item = Item(f"{number}:{created}")
                conn.get_connection("b").add(item)
                mine[0][f"{created}"] = item
                source, target = (mine[0], mine[1]) if rng.random() < 0.5 else (mine[1], mine[0])
                if len(source) > 1:
                    key = rng.choice(sorted(source))
                    target[key] = source.pop(key)
                tm.commit()
                created += 1
            except ConflictError:
                tm.abort()
        results.put((number, created))
    finally:
        conn.close()
        for db in databases.values():
            db.close()


def race(spec: dict, monkeypatch) -> None:
    # The walk of a big collection takes long enough for many commits to land
    # during it; slow this small one down to match.
    from atoll.collection.marking import Marker

    follow = Marker.follow

    def slow_follow(self, database, record):
        time.sleep(0.001)
        follow(self, database, record)

    monkeypatch.setattr(Marker, "follow", slow_follow)
    databases = open_collection(spec)
    with databases["a"].transaction() as conn:
        for number in range(WORKERS):
            for i in range(2):
                conn.root()[f"w{number}-{i}"] = PersistentMapping()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    stop_at = time.time() + SECONDS
    workers = [context.Process(target=worker, args=(spec, n, stop_at, results)) for n in range(WORKERS)]
    for process in workers:
        process.start()
    packs = 0
    while time.time() < stop_at or packs < 2:
        atoll.collection.pack(databases)
        packs += 1
    counts = dict(results.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    atoll.collection.pack(databases)
    with databases["a"].transaction() as conn:
        for number in range(WORKERS):
            values = set()
            for i in range(2):
                values.update(item.value for item in conn.root()[f"w{number}-{i}"].values())
            assert values == {f"{number}:{k}" for k in range(counts[number])}
    assert all(counts.values())
    report = atoll.collection.check(databases)
    assert report.ok, str(report)
    for db in databases.values():
        db.close()


@pytest.mark.parametrize("history", ["history-free", "history-preserving"])
def test_sqlite_collection(tmp_path, history, monkeypatch):
    # In a history-free database the walk reads current states, so an object moved
    # from a container not yet read to one already read is found only by marking
    # from what was committed during the walk.
    keep = history == "history-preserving"
    race({"a": ("sqlite", str(tmp_path / "a.db"), keep), "b": ("sqlite", str(tmp_path / "b.db"), True)}, monkeypatch)


def test_sqlite_and_postgresql_collection(tmp_path, request, monkeypatch):
    import postgres_support

    storage = postgres_support.make_storage(request.node.name, keep_history=False)
    schema = storage.schema
    storage.close()
    race({"a": ("postgresql", schema, False), "b": ("sqlite", str(tmp_path / "b.db"), True)}, monkeypatch)
