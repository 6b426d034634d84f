"""In-memory reads of two systems, timed in alternation: ``python -m bench.paired``.

``read_hot`` and ``read_steamin`` take microseconds per object, and on a shared
machine the CPU's speed drifts by 2x over seconds: two processes measured one after
the other can differ by that much running the same code. This tool gives each
system its own worker process, builds both databases the way the main benchmark
does (``add``, ``update``, ``read_cold``, ``read_warm``, one system at a time), then
runs a turn of a workload in one worker, a turn in the other, and so on for
``--rounds`` rounds (the worker not timing waits, idle). A turn is three passes over
the objects, of which the fastest counts (the first refills the CPU caches the other
worker used). Both see the same moments of the machine, so the ratio of their median
turns is what the code costs, not when it ran.

    bench/.venv/bin/python -m bench.paired --pair atoll-sqlite,zodb-filestorage \\
        --layouts mapping,oobtree --count 10000
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from bench.systems import BACKENDS, DEFAULT_PG_DSN, Place, create_pg_databases, new_place, remove_place
from bench.workloads import LAYOUTS, PHASES, Session, steamin_pass

SETUP = ["add", "update", "read_cold", "read_warm"]
MEASURED = ["read_hot", "read_steamin"]
PASSES_PER_TURN = 3


def _worker(conn: Any, backend: str, place: dict, layout: str, count: int) -> None:
    """Build the database when told, then time single passes on request."""
    session = Session(BACKENDS[backend], Place(**place), 0, layout, count)
    try:
        conn.recv()  # "setup"
        session.open()
        session.prepare([0])
        for name in SETUP:
            PHASES[name](session)()
        session.touch_all()
        items = session.all_items()
        passes = {"read_hot": session.touch_all, "read_steamin": lambda: steamin_pass(items)}
        conn.send("ready")
        while True:
            request = conn.recv()
            if request is None:
                break
            # The other worker ran meanwhile and left the CPU caches to its own data:
            # the first pass of a turn refills them, the fastest of the turn counts.
            best = float("inf")
            for _ in range(PASSES_PER_TURN):
                start = time.perf_counter()
                objects = passes[request]()
                best = min(best, time.perf_counter() - start)
            conn.send((objects, best))
        session.check()
    finally:
        session.close()
        conn.send("closed")


def measure_pair(pair: list[str], layout: str, count: int, rounds: int, pg_dsn: str,
                 tmpdir: str) -> dict[str, dict[str, float]]:
    """Median pass (objects/s) of each backend of ``pair`` for each measured workload."""
    context = multiprocessing.get_context("spawn")
    places, workers, pipes = [], [], []
    try:
        for key in pair:
            place = new_place(tmpdir, pg_dsn, f"paired-{key}")
            places.append(place)
            if BACKENDS[key].postgres:
                create_pg_databases(place, ["a", "b"] if layout == "multidb" else ["a"])
            ours, theirs = context.Pipe()
            worker = context.Process(target=_worker, args=(
                theirs, key, {"directory": place.directory, "pg_prefix": place.pg_prefix,
                              "pg_dsn": place.pg_dsn}, layout, count))
            worker.start()
            workers.append(worker)
            pipes.append(ours)
        for pipe in pipes:  # one at a time: building is timed nowhere, but shares the CPU
            pipe.send("setup")
            if pipe.recv() != "ready":
                raise RuntimeError("a worker failed to set up")
        rates: dict[str, dict[str, list[float]]] = {k: {w: [] for w in MEASURED} for k in pair}
        for r in range(rounds):
            for workload in MEASURED:
                order = list(zip(pair, pipes))
                if r % 2:
                    order.reverse()  # neither system always runs right after the other
                for key, pipe in order:
                    pipe.send(workload)
                    objects, seconds = pipe.recv()
                    rates[key][workload].append(objects / seconds)
        for pipe in pipes:
            pipe.send(None)
            pipe.recv()
        return {k: {w: statistics.median(v) for w, v in per.items()} for k, per in rates.items()}
    finally:
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
        for place in places:
            remove_place(place)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", required=True, help="two backends, atoll's first: e.g. atoll-sqlite,zodb-filestorage")
    p.add_argument("--layouts", default="mapping,oobtree", help=f"any of {', '.join(LAYOUTS)}")
    p.add_argument("--count", type=int, default=10_000, help="objects")
    p.add_argument("--rounds", type=int, default=51, help="alternations per workload")
    p.add_argument("--processes", type=int, default=5,
                   help="fresh pairs of workers per layout (a process's memory layout and hash seed "
                        "move its figures too); the figure is the median over them")
    p.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    p.add_argument("--tmpdir", default=str(Path(__file__).parent / "results" / "tmp"))
    options = p.parse_args(argv)
    pair = options.pair.split(",")
    if len(pair) != 2 or any(k not in BACKENDS for k in pair):
        p.error(f"--pair takes two of: {', '.join(BACKENDS)}")
    print(f"| layout | objects | workload | {pair[0]} obj/s | {pair[1]} obj/s | ratio | each pair of processes |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    for layout in options.layouts.split(","):
        runs = [measure_pair(pair, layout, options.count, options.rounds, options.pg_dsn, options.tmpdir)
                for _ in range(options.processes)]
        for workload in MEASURED:
            a = statistics.median(run[pair[0]][workload] for run in runs)
            b = statistics.median(run[pair[1]][workload] for run in runs)
            each = ", ".join(f"{run[pair[0]][workload] / run[pair[1]][workload]:.2f}" for run in runs)
            print(f"| {layout} | {options.count:,} | {workload} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {each} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
