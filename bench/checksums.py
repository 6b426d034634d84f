"""The cost of record checksums, measured side by side: ``python -m bench.checksums``.

One process, two SQLite files written and read the same way, one storing checksums
and one storing none (NULL: what a file written before checksums holds, which
loads do not check). Each round writes ``--count`` records in one commit to each
file (the one without computing none) and loads them all back cold (``load_many`` through a new view, in batches
as a connection's read-ahead does) and one by one (``load``), alternating which
file goes first, so the machine's drift hits both alike. Prints the median time
per record of each side and the ratio, with the range over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from atoll.ids import ROOT_OID, p64, z64
from atoll.storage import sqlite_write
from atoll.storage.base import TransactionMeta
from atoll.storage.sqlite import SQLiteStorage


def _no_crc(data: bytes, seed: int = 0) -> int:
    return 0


def write(storage: SQLiteStorage, records: dict[bytes, bytes], checksums: bool) -> float:
    """Seconds to commit ``records``; without ``checksums`` the writer computes none
    (a trivial function stands in for CRC-32) and the column is set NULL afterwards."""
    original = sqlite_write._crc32
    if not checksums:
        sqlite_write._crc32 = _no_crc
    try:
        return _write(storage, records, checksums)
    finally:
        sqlite_write._crc32 = original


def _write(storage: SQLiteStorage, records: dict[bytes, bytes], checksums: bool) -> float:
    view = storage.open_view()
    view.tpc_begin(TransactionMeta())
    for oid, data in records.items():
        view.store(oid, z64, data)
    start = time.perf_counter()
    view.tpc_vote()
    view.tpc_finish()
    seconds = time.perf_counter() - start
    if not checksums:
        storage._writer.execute("UPDATE object_state SET checksum = NULL")
    view.close()
    return seconds


def read(storage: SQLiteStorage, oids: list[bytes]) -> tuple[float, float]:
    view = storage.open_view()
    start = time.perf_counter()
    for i in range(0, len(oids), 100):
        view.load_many(oids[i : i + 100])
    many = time.perf_counter() - start
    view.close()
    view = storage.open_view()
    start = time.perf_counter()
    for oid in oids:
        view.load(oid)
    one = time.perf_counter() - start
    view.close()
    return many, one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=400, help="bytes per record")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="atoll-checksums-")
    times: dict[str, dict[str, list[float]]] = {side: {"write": [], "load_many": [], "load": []} for side in ("with", "without")}
    for n in range(args.rounds):
        order = ("with", "without") if n % 2 == 0 else ("without", "with")
        for side in order:
            path = os.path.join(folder, f"{side}-{n}.db")
            storage = SQLiteStorage(path, synchronous="normal")
            records = {p64(i + 1): os.urandom(args.size) for i in range(args.count)}
            records[ROOT_OID] = b"root"
            seconds = write(storage, records, side == "with")
            many, one = read(storage, list(records))
            storage.close()
            times[side]["write"].append(seconds / len(records))
            times[side]["load_many"].append(many / len(records))
            times[side]["load"].append(one / len(records))
    print(f"{args.count} records of {args.size} bytes, {args.rounds} rounds (median and range, microseconds per record)")
    for what in ("write", "load_many", "load"):
        w, wo = times["with"][what], times["without"][what]
        ratios = [a / b for a, b in zip(w, wo)]
        print(
            f"{what:10} with checksums {statistics.median(w) * 1e6:7.2f}  without {statistics.median(wo) * 1e6:7.2f}"
            f"  ratio median {statistics.median(ratios):.3f} (range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
