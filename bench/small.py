"""The ``small`` workload: many small transactions, the shape of a web application.

``python -m bench.small`` runs every case; ``--cases`` picks some. Each case times
its sides in one run, alternating them round after round (the machine's speed
drifts), and reports each side's transactions per second (median and range over
the rounds), its p99 commit latency, and each side's ratio to the case's first
side, round by round.

Cases:

``sqlite-1``
    1 object changed per transaction: atoll SQLite (default durability,
    ``synchronous=full``) against ZODB FileStorage (fsync per commit) and a bare
    ``sqlite3`` loop (WAL, ``synchronous=FULL``, two INSERTs per transaction).
``sqlite-2x50``
    a collection of two databases, each transaction changing 50 objects in each and
    adding one cross-database reference: atoll on two SQLite files against ZODB on
    two FileStorages.
``pg-1``
    1 object per transaction: atoll PostgreSQL against RelStorage PostgreSQL and a
    bare psycopg loop (one INSERT and COMMIT per transaction).
``pg-2db``
    atoll PostgreSQL, 1 object per transaction in one database against 1 object in
    each of a collection of two PostgreSQL databases.
``sqlite-4p``, ``pg-4p``
    4 processes committing 1-object transactions (each its own object) to one
    SQLite file / one PostgreSQL database: total throughput and p99 latency,
    atoll against RelStorage PostgreSQL for ``pg-4p``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Callable

PROCESSES = 4  # of the -4p cases
DSN = os.environ.get("ATOLL_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")

#: A side builds its databases in a fresh folder and returns a ``commit(i)``
#: callable running transaction ``i`` and a ``close()``.
Side = Callable[[str], tuple[Callable[[int], None], Callable[[], None]]]


# -- databases ---------------------------------------------------------------------


def _pg_database(tag: str) -> str:
    """A fresh PostgreSQL database; its DSN."""
    import psycopg

    name = f"bench_small_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _CREATED.append(name)
    parts = [p for p in DSN.split() if not p.startswith("dbname=")]
    return " ".join(parts + [f"dbname={name}"])


_CREATED: list[str] = []


def _drop_pg_databases() -> None:
    if not _CREATED:
        return
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        for name in _CREATED:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _CREATED.clear()


def _atoll_storage(kind: str, folder: str, name: str, dsn: str | None = None):
    if kind == "sqlite":
        from atoll.storage import SQLiteStorage

        return SQLiteStorage(os.path.join(folder, f"{name}.db"))
    from atoll.storage import PostgreSQLStorage

    return PostgreSQLStorage(dsn or _pg_database(name))


def _zodb_storage(kind: str, folder: str, name: str, dsn: str | None = None):
    if kind == "filestorage":
        from ZODB.FileStorage import FileStorage

        return FileStorage(os.path.join(folder, f"{name}.fs"))
    from ZODB.config import storageFromString

    return storageFromString(
        "%import relstorage\n<relstorage>\n  keep-history true\n"
        f"  <postgresql>\n    dsn {dsn or _pg_database(name)}\n  </postgresql>\n</relstorage>\n"
    )


def _db(system: str, storage, name: str, databases: dict):
    if system == "atoll":
        import atoll

        return atoll.DB(storage, database_name=name, databases=databases)
    import ZODB

    return ZODB.DB(storage, database_name=name, databases=databases)


# -- sides -------------------------------------------------------------------------


def one_object(system: str, kind: str, dsn: str | None = None, slot: int = 0, slots: int = 1) -> Side:
    """1 object changed per transaction in one database: object ``slot`` of ``slots``
    (made by the first process that opens the database)."""

    def build(folder: str):
        import transaction
        from persistent.mapping import PersistentMapping

        storage = (_atoll_storage if system == "atoll" else _zodb_storage)(kind, folder, "one", dsn)
        db = _db(system, storage, "one", {})
        manager = transaction.TransactionManager()
        conn = db.open(manager)
        root = conn.root()
        if f"obj{slot}" not in root:
            for n in range(slots):
                root[f"obj{n}"] = PersistentMapping(n=0)
            manager.commit()
        obj = root[f"obj{slot}"]

        def commit(i: int) -> None:
            obj["n"] = i
            manager.commit()

        def close() -> None:
            conn.close()
            db.close()

        return commit, close

    return build


def collection(system: str, kind: str, per_database: int, dsns: tuple[str, str] | None = None) -> Side:
    """Two databases; each transaction changes ``per_database`` objects in each and
    adds one cross-database reference."""

    def build(folder: str):
        import transaction
        from persistent.mapping import PersistentMapping

        make = _atoll_storage if system == "atoll" else _zodb_storage
        databases: dict = {}
        for index, name in enumerate("ab"):
            _db(system, make(kind, folder, name, dsns[index] if dsns else None), name, databases)
        manager = transaction.TransactionManager()
        conn = databases["a"].open(manager)
        other = conn.get_connection("b")
        items = {}
        for c in (conn, other):
            root = c.root()
            root["items"] = [PersistentMapping(n=0) for _ in range(per_database)]
            items[c] = root["items"]
            for item in items[c]:
                c.add(item)
            root._p_changed = True
        manager.commit()
        a_items, b_items = items[conn], items[other]

        def commit(i: int) -> None:
            for item in a_items:
                item["n"] = i
            for item in b_items:
                item["n"] = i
            a_items[i % per_database]["ref"] = b_items[(i * 7) % per_database]  # cross-database
            manager.commit()

        def close() -> None:
            conn.close()
            for db in databases.values():
                db.close()

        return commit, close

    return build


def bare_sqlite() -> Side:
    def build(folder: str):
        import sqlite3

        conn = sqlite3.connect(os.path.join(folder, "bare.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (tid INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, zoid INTEGER, tid INTEGER, state BLOB)")
        data = os.urandom(60)

        def commit(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, '')", (i,))
            conn.execute("INSERT INTO s (zoid, tid, state) VALUES (1, ?, ?)", (i, data))
            conn.execute("COMMIT")

        return commit, conn.close

    return build


def bare_psycopg() -> Side:
    def build(folder: str):
        import psycopg

        conn = psycopg.connect(_pg_database("bare"), autocommit=True)
        conn.execute("CREATE TABLE s (zoid bigint, tid bigint, state bytea, PRIMARY KEY (zoid, tid))")
        data = os.urandom(60)

        def commit(i: int) -> None:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO s VALUES (1, %s, %s)", (i, data))
            conn.execute("COMMIT")

        return commit, conn.close

    return build


# -- timing ------------------------------------------------------------------------


def _time(build: Side, folder: str, txns: int) -> list[float]:
    commit, close = build(folder)
    try:
        commit(-1)  # warm: first-use costs (imports, statements) are not timed
        latencies = []
        for i in range(txns):
            start = time.perf_counter()
            commit(i)
            latencies.append(time.perf_counter() - start)
        return latencies
    finally:
        close()


def _worker(build: Side, folder: str, txns: int, queue, start) -> None:
    start.wait()
    try:
        queue.put(_time(build, folder, txns))
    except BaseException as e:  # reported by the parent, which would wait forever
        queue.put(f"{type(e).__name__}: {e}")


def _time_processes(make: Callable[[int], Side], folder: str, txns: int, processes: int) -> tuple[float, list[float]]:
    """Total throughput and every latency of ``processes`` workers at once."""
    ctx = multiprocessing.get_context("fork")
    queue, start = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_worker, args=(make(n), folder, txns, queue, start)) for n in range(processes)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let every worker open its databases
    began = time.perf_counter()
    start.set()
    results = [queue.get(timeout=600) for _ in workers]
    elapsed = time.perf_counter() - began
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"a worker failed: {failed[0]}")
    latencies = [lat for result in results for lat in result]
    for w in workers:
        w.join()
    return processes * txns / elapsed, latencies


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_case(name: str, sides: dict[str, object], rounds: int, txns: int, processes: int = 1) -> None:
    rates: dict[str, list[float]] = {label: [] for label in sides}
    p99s: dict[str, list[float]] = {label: [] for label in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for label in order:
            folder = tempfile.mkdtemp(prefix="atoll-small-")
            try:
                if processes == 1:
                    latencies = _time(sides[label], folder, txns)  # type: ignore[arg-type]
                    rate = len(latencies) / sum(latencies)
                else:
                    setup = sides[label]  # a function of the worker number
                    setup.reset()  # type: ignore[attr-defined]  # a fresh database each round
                    # The first worker creates the database (and, PostgreSQL, its schema).
                    _time(setup(0), folder, 1)  # type: ignore[operator]
                    rate, latencies = _time_processes(setup, folder, txns, processes)  # type: ignore[arg-type]
                rates[label].append(rate)
                p99s[label].append(_p99(latencies))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                _drop_pg_databases()
    first = next(iter(sides))
    print(f"\n== {name}: {rounds} rounds x {txns} transactions" + (f" x {processes} processes" if processes > 1 else ""))
    for label in sides:
        rs = rates[label]
        ratios = [a / b for a, b in zip(rs, rates[first])]
        line = (
            f"  {label:34} {statistics.median(rs):8.0f} txn/s  (range {min(rs):.0f}-{max(rs):.0f})"
            f"  p99 {statistics.median(p99s[label]) * 1000:6.2f} ms"
        )
        if label != first:
            line += f"  {first} / this: {min(1 / x for x in ratios):.2f}-{max(1 / x for x in ratios):.2f}x"
        print(line, flush=True)


def cases(txns: int) -> dict[str, tuple[dict[str, object], int]]:
    return {
        "sqlite-1": ({
            "atoll SQLite": one_object("atoll", "sqlite"),
            "ZODB FileStorage": one_object("zodb", "filestorage"),
            "bare sqlite3 (WAL, FULL)": bare_sqlite(),
        }, 1),
        "sqlite-2x50": ({
            "atoll 2 SQLite files": collection("atoll", "sqlite", 50),
            "ZODB 2 FileStorages": collection("zodb", "filestorage", 50),
        }, 1),
        "pg-1": ({
            "atoll PostgreSQL": one_object("atoll", "postgresql"),
            "RelStorage PostgreSQL": one_object("zodb", "relstorage"),
            "bare psycopg": bare_psycopg(),
        }, 1),
        "pg-2db": ({
            "atoll PostgreSQL, 1 database": one_object("atoll", "postgresql"),
            "atoll PostgreSQL, 2 databases": _two_pg_databases(),
        }, 1),
        "sqlite-4p": ({
            "atoll SQLite": _shared("atoll", "sqlite"),
        }, PROCESSES),
        "pg-4p": ({
            "atoll PostgreSQL": _shared("atoll", "postgresql"),
            "RelStorage PostgreSQL": _shared("zodb", "relstorage"),
        }, PROCESSES),
    }


def _two_pg_databases() -> Side:
    def build(folder: str):
        return collection("atoll", "postgresql", 1, (_pg_database("a"), _pg_database("b")))(folder)

    return build


def _shared(system: str, kind: str) -> Callable[[int], Side]:
    """Sides for several processes on one database: worker n changes its own object."""
    dsn: dict[str, str] = {}

    def for_worker(n: int) -> Side:
        if kind != "sqlite" and "dsn" not in dsn:
            dsn["dsn"] = _pg_database("shared")
        return one_object(system, kind, dsn.get("dsn"), slot=n, slots=PROCESSES)

    def reset() -> None:
        dsn.clear()

    for_worker.reset = reset  # type: ignore[attr-defined]
    return for_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.small", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--txns", type=int, default=300)
    args = parser.parse_args(argv)
    known = cases(args.txns)
    chosen = args.cases or list(known)
    for name in chosen:
        if name not in known:
            parser.error(f"unknown case {name!r}; choose from {', '.join(known)}")
    print(f"atoll small transactions, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    try:
        for name in chosen:
            sides, processes = known[name]
            for side in sides.values():
                if hasattr(side, "reset"):
                    side.reset()  # type: ignore[attr-defined]
            run_case(name, sides, args.rounds, args.txns, processes)
    finally:
        _drop_pg_databases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
