"""Peak memory of a long import, with a savepoint every N objects against none.

    PYTHONPATH=src /work/benchvenv/bin/python -m bench.savepoint_memory [--objects 1000000]
        [--every 10000] [--repeat 2] [--json bench/results/savepoint_memory.json]

Each run is a fresh process (peak RSS, ``ru_maxrss``, is per process) that opens an
empty file database (atoll: SQLite; ZODB: FileStorage, when ZODB is importable),
puts ``--objects`` :class:`bench.objects.Item` into one ``IOBTree`` in a single
transaction, with ``transaction.savepoint()`` every ``--every`` objects or never, and
commits. Runs alternate between sides and modes; each line gives the peak RSS and
the time, and the summary the range over repetitions and the ratio against the run
without savepoints.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(system: str, objects: int, every: int, directory: str) -> dict:
    import transaction
    from BTrees.IOBTree import IOBTree

    from bench.objects import Item

    if system == "atoll":
        import atoll

        db = atoll.DB(os.path.join(directory, "import.db"))
    else:
        import ZODB
        import ZODB.FileStorage

        db = ZODB.DB(ZODB.FileStorage.FileStorage(os.path.join(directory, "import.fs")))
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    start = time.perf_counter()
    conn.root()["items"] = tree = IOBTree()
    for n in range(objects):
        tree[n] = Item(n)
        if every and n % every == every - 1:
            manager.savepoint()
    before_commit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manager.commit()
    seconds = time.perf_counter() - start
    conn.close()
    db.close()
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_before_commit_mib": before_commit / 1024,
        "seconds": seconds,
    }


def run_one(system: str, objects: int, every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="atoll-sp-bench-") as directory:
        out = subprocess.run(
            [sys.executable, "-m", "bench.savepoint_memory", "--child", system,
             "--objects", str(objects), "--every", str(every), "--dir", directory],
            check=True, capture_output=True, text=True,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.objects, args.every, args.dir)))
        return 0
    systems = ["atoll"]
    try:
        import ZODB  # noqa: F401

        systems.append("zodb")
    except ImportError:
        print("ZODB is not importable here: atoll only", file=sys.stderr)
    results: dict[str, list[dict]] = {}
    for repetition in range(args.repeat):
        order = systems if repetition % 2 == 0 else systems[::-1]
        for system in order:
            for every in (args.every, 0) if repetition % 2 == 0 else (0, args.every):
                result = run_one(system, args.objects, every)
                key = f"{system} {'savepoint every ' + str(every) if every else 'no savepoint'}"
                results.setdefault(key, []).append(result)
                print(f"{key}: peak RSS {result['peak_rss_mib']:.0f} MiB "
                      f"(before commit {result['peak_before_commit_mib']:.0f} MiB), {result['seconds']:.1f} s",
                      flush=True)
    print(f"\n{args.objects:,} objects, {args.repeat} repetitions (ranges over repetitions):")
    for system in systems:
        without = results[f"{system} no savepoint"]
        with_sp = results[f"{system} savepoint every {args.every}"]
        for label, runs in (("no savepoint", without), (f"savepoint every {args.every}", with_sp)):
            rss = [r["peak_rss_mib"] for r in runs]
            secs = [r["seconds"] for r in runs]
            print(f"  {system:5} {label:24} peak RSS {min(rss):.0f}-{max(rss):.0f} MiB, {min(secs):.1f}-{max(secs):.1f} s")
        ratio = [w["peak_rss_mib"] / n["peak_rss_mib"] for w, n in zip(with_sp, without)]
        print(f"  {system:5} peak RSS with savepoints / without: {min(ratio):.2f}-{max(ratio):.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"objects": args.objects, "every": args.every, "results": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
