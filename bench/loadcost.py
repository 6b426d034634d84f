"""What checking every global costs the reads: two atoll source trees, side by side.

``python -m bench.loadcost --before /path/to/old/src --after /path/to/new/src``
gives each tree its own worker process (each imports atoll from its tree), builds
the same database in each (``add`` then ``update`` of ``--count`` objects, with the
main benchmark's objects and layouts, on ``atoll-memory`` or ``atoll-sqlite``), then
times the reads that unpickle records (``read_cold``, ``read_warm``,
``read_prefetched``) a turn in one worker, a turn in the other, for ``--rounds``
rounds. Both see the same moments of the (shared, drifting) machine, so the ratio
of their median turns is what the code change costs. Used for issue 14 (safe
loading: every global a record names is resolved through the database's
ClassPolicy), whose results are in ``docs/benchmark-notes.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MEASURED = ["read_cold", "read_warm", "read_prefetched"]


def _worker(conn: Any, src: str, backend: str, place: dict, layout: str, count: int) -> None:
    sys.path.insert(0, src)
    import atoll

    from bench.systems import BACKENDS, Place
    from bench.workloads import PHASES, Session

    if not atoll.__file__.startswith(src):
        raise RuntimeError(f"atoll imported from {atoll.__file__}, not {src}")
    session = Session(BACKENDS[backend], Place(**place), 0, layout, count)
    try:
        session.open()
        session.prepare([0])
        for name in ("add", "update"):
            PHASES[name](session)()
        conn.send("ready")
        while True:
            request = conn.recv()
            if request is None:
                break
            timed = PHASES[request](session)
            start = time.perf_counter()
            objects = timed()
            conn.send((objects, time.perf_counter() - start))
        session.check()
    finally:
        session.close()
        conn.send("closed")


def measure(trees: dict[str, str], backend: str, layout: str, count: int, rounds: int,
            tmpdir: str) -> dict[str, dict[str, list[float]]]:
    """objects/s of each turn, per tree and workload."""
    from bench.systems import new_place, remove_place

    context = multiprocessing.get_context("spawn")
    places, workers, pipes = [], [], {}
    try:
        for label, src in trees.items():
            place = new_place(tmpdir, "", f"loadcost-{label}")
            places.append(place)
            ours, theirs = context.Pipe()
            worker = context.Process(target=_worker, args=(
                theirs, src, backend, {"directory": place.directory, "pg_prefix": place.pg_prefix,
                                       "pg_dsn": place.pg_dsn}, layout, count))
            worker.start()
            workers.append(worker)
            pipes[label] = ours
            if ours.recv() != "ready":
                raise RuntimeError("a worker failed to set up")
        rates: dict[str, dict[str, list[float]]] = {k: {w: [] for w in MEASURED} for k in trees}
        for r in range(rounds):
            for workload in MEASURED:
                order = list(pipes.items())
                if r % 2:
                    order.reverse()
                for label, pipe in order:
                    pipe.send(workload)
                    objects, seconds = pipe.recv()
                    rates[label][workload].append(objects / seconds)
        for pipe in pipes.values():
            pipe.send(None)
            pipe.recv()
        return rates
    finally:
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
        for place in places:
            remove_place(place)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the src directory of the code before the change")
    p.add_argument("--after", required=True, help="the src directory of the code after the change")
    p.add_argument("--backends", default="atoll-memory,atoll-sqlite")
    p.add_argument("--layouts", default="mapping,oobtree")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--processes", type=int, default=3, help="fresh pairs of workers per backend and layout")
    p.add_argument("--tmpdir", default=str(Path(__file__).parent / "results" / "tmp"))
    options = p.parse_args(argv)
    trees = {"before": str(Path(options.before).resolve()), "after": str(Path(options.after).resolve())}
    print("| backend | layout | objects | workload | before obj/s | after obj/s | after/before | each pair of processes |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    for backend in options.backends.split(","):
        for layout in options.layouts.split(","):
            runs = [measure(trees, backend, layout, options.count, options.rounds, options.tmpdir)
                    for _ in range(options.processes)]
            for workload in MEASURED:
                before = [statistics.median(run["before"][workload]) for run in runs]
                after = [statistics.median(run["after"][workload]) for run in runs]
                each = ", ".join(f"{a / b:.3f}" for a, b in zip(after, before))
                b, a = statistics.median(before), statistics.median(after)
                print(f"| {backend} | {layout} | {options.count:,} | {workload} | {b:,.0f} | {a:,.0f} | "
                      f"{a / b:.3f} | {each} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
