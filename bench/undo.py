"""``python -m bench.undo``: undo, atoll against ZODB, side by side in one run.

The shape users have: a database of ``--objects`` items with a history of
``--history`` small transactions (each changes ``--changed`` items), then

``undo_log``
    ``db.undoLog(0, 20)``: what an "undo" screen shows.
``undo``
    undo the newest transaction and commit (the undo itself is then the newest, so
    every repetition undoes a transaction of ``--changed`` objects).

Each pair (atoll SQLite against ZODB FileStorage and RelStorage SQLite) runs in one
process, alternating sides, ``--repeat`` times; the report gives the fastest and
slowest milliseconds per operation of each side and the ratio of the fastest.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import transaction
from persistent.mapping import PersistentMapping

from bench.objects import Item, payload
from bench.systems import BACKENDS, Place, make_db

PAIRS = [("atoll-sqlite", "zodb-filestorage"), ("atoll-sqlite", "zodb-relstorage-sqlite")]


def build(key: str, folder: str, objects: int, history: int, changed: int):
    backend = BACKENDS[key]
    place = Place(directory=folder, pg_prefix="unused")
    db = make_db(backend, backend.build(place, key, 0), key, {}, 10_000)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = conn.root()["items"] = PersistentMapping()
    for n in range(objects):
        items[n] = Item(n)
    manager.commit()
    for generation in range(1, history + 1):
        start = (generation * changed) % objects
        for n in range(start, start + changed):
            items[n % objects].data = payload(n, generation)
        manager.get().note(f"change {generation}")
        manager.commit()
    return db, conn, manager


def measure(db, manager) -> dict[str, float]:
    started = time.perf_counter()
    log = db.undoLog(0, 20)
    listed = time.perf_counter() - started
    started = time.perf_counter()
    db.undo(log[0]["id"], manager.get())
    manager.commit()
    undone = time.perf_counter() - started
    return {"undo_log": listed, "undo": undone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.objects} objects, {args.history} transactions of {args.changed} changes; "
          f"{args.repeat} alternating repetitions (ms per operation, fastest..slowest)")
    for pair in PAIRS:
        missing = [key for key in pair if BACKENDS[key].missing()]
        if missing:
            print(f"{' vs '.join(pair)}: skipped ({BACKENDS[missing[0]].missing()})")
            continue
        folder = tempfile.mkdtemp(prefix="bench-undo-")
        try:
            sides = {key: build(key, folder, args.objects, args.history, args.changed) for key in pair}
            times: dict[str, dict[str, list[float]]] = {key: {"undo_log": [], "undo": []} for key in pair}
            for repetition in range(args.repeat):
                order = pair if repetition % 2 == 0 else pair[::-1]
                for key in order:
                    db, _, manager = sides[key]
                    for name, seconds in measure(db, manager).items():
                        times[key][name].append(seconds)
            for name in ("undo_log", "undo"):
                atoll_side, zodb_side = (times[key][name] for key in pair)
                print(
                    f"{name:9} {pair[0]} {min(atoll_side) * 1e3:7.2f}..{max(atoll_side) * 1e3:7.2f}  "
                    f"{pair[1]} {min(zodb_side) * 1e3:7.2f}..{max(zodb_side) * 1e3:7.2f}  "
                    f"ratio (zodb/atoll, fastest) {min(zodb_side) / min(atoll_side):5.2f}x"
                )
            for db, conn, manager in sides.values():
                conn.close()
                db.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
