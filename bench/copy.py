"""Copying a database, side by side with ZODB's zodbconvert: ``python -m bench.copy``.

One history is built as a ZODB FileStorage (``Data.fs``): ``--objects`` objects
written over ``--transactions`` transactions (new objects, and every tenth
transaction rewriting some earlier ones, so there are old revisions to copy too).
Then, each in a fresh process whose peak memory is read from the kernel, in
alternating order per repetition:

- ``zodbconvert``: what ZODB's zodbconvert command runs, FileStorage to
  FileStorage (``copyTransactionsFrom``), timed in its process as atoll's copies are;
- ``atoll fs->sqlite``: ``atoll.copy("Data.fs", "copy.db")``;
- ``atoll sqlite->sqlite``: ``atoll.copy("copy.db", "again.db")``.

Each copy's result is checked (the destination's transaction count) before its
time counts. ``--history-factor`` builds a second history with that many times the
transactions over the same objects, to show whether memory grows with history.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

def build_history(path: str, objects: int, transactions: int) -> None:
    import transaction
    import ZODB
    import ZODB.FileStorage
    from persistent.mapping import PersistentMapping

    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    conn = db.open()
    root = conn.root()
    per = max(1, objects // transactions)
    made = 0
    items: list = []
    for t in range(transactions):
        box = PersistentMapping()
        root[t] = box
        for _ in range(per):
            item = PersistentMapping(n=made, text="x" * 80)
            box[made] = item
            items.append(item)
            made += 1
        if t % 10 == 9:
            for item in items[-per * 5 :: 7]:
                item["n"] += 1
        transaction.get().note(f"transaction {t}")
        transaction.commit()
        if t % 100 == 99:
            conn.cacheMinimize()
            items = items[-per * 10 :]
    conn.close()
    db.close()


RUNNER = """
import sys, time, resource
kind, source, destination = sys.argv[1:4]
# Imports are not what is timed: each side imports what its copy runs (atoll's
# copy modules are imported on first use, which would otherwise count 0.05 s).
import ZODB.FileStorage, atoll
import atoll.collection.copy, atoll.collection.zodb, atoll.storage.sqlite, atoll.storage.sqlite_copy
started = time.perf_counter()
if kind == "zodbconvert":
    src = ZODB.FileStorage.FileStorage(source, read_only=True)
    dst = ZODB.FileStorage.FileStorage(destination, create=True)
    dst.copyTransactionsFrom(src)
    count = sum(1 for _ in dst.iterator())
    src.close(); dst.close()
else:
    stats = atoll.copy(source, destination)
    count = stats.transactions
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds} {peak} {count}")
"""


def run_one(kind: str, source: str, destination: str) -> tuple[float, float, int]:
    if os.path.exists(destination):
        os.remove(destination)
    for suffix in ("-wal", "-shm", ".index", ".lock", ".tmp"):
        if os.path.exists(destination + suffix):
            os.remove(destination + suffix)
    done = subprocess.run([sys.executable, "-c", RUNNER, kind, source, destination],
                          capture_output=True, text=True, check=True, env={**os.environ})
    seconds, peak, count = done.stdout.split()
    return float(seconds), float(peak), int(count)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.copy", description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--transactions", type=int, default=1_000)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--history-factor", type=int, default=0,
                   help="also build a history with this many times the transactions, same objects")
    options = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="atoll-bench-copy-")
    try:
        histories = [(options.objects, options.transactions)]
        if options.history_factor > 1:
            histories.append((options.objects, options.transactions * options.history_factor))
        for objects, transactions in histories:
            source = os.path.join(folder, f"Data-{transactions}.fs")
            started = time.perf_counter()
            build_history(source, objects, transactions)
            print(f"history: {objects:,} objects, {transactions:,} transactions, "
                  f"{os.path.getsize(source) / 2**20:.1f} MiB Data.fs (built in {time.perf_counter() - started:.0f} s)")
            sqlite_copy = os.path.join(folder, "copy.db")
            kinds = [("zodbconvert", source, os.path.join(folder, "out.fs")),
                     ("atoll fs->sqlite", source, sqlite_copy),
                     ("atoll sqlite->sqlite", sqlite_copy, os.path.join(folder, "again.db"))]
            results: dict[str, list[tuple[float, float]]] = {k: [] for k, _, _ in kinds}
            for rep in range(options.repetitions):
                order = kinds if rep % 2 == 0 else [kinds[1], kinds[0], kinds[2]]
                for kind, src, dst in order:
                    if kind == "atoll sqlite->sqlite" and not os.path.exists(sqlite_copy):
                        run_one("atoll fs->sqlite", source, sqlite_copy)
                    seconds, peak, count = run_one(kind, src, dst)
                    assert count == transactions + 1, (kind, count)  # + ZODB's root creation
                    results[kind].append((seconds, peak))
            base = statistics.median(s for s, _ in results["zodbconvert"])
            print("| copy | seconds (median) | range | peak MiB | speed vs zodbconvert |")
            print("| --- | ---: | --- | ---: | ---: |")
            for kind, figures in results.items():
                times = [s for s, _ in figures]
                med = statistics.median(times)
                print(f"| {kind} | {med:.2f} | {min(times):.2f} to {max(times):.2f} | "
                      f"{max(m for _, m in figures):.0f} | {base / med:.2f}x |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
