"""The zodbshootout workloads, written once for both systems.

atoll and ZODB share ``persistent``, ``transaction`` and ``BTrees``, and atoll keeps
ZODB's names for ``DB.open``, ``Connection.root``, ``prefetch`` and
``cacheMinimize``, so one :class:`Session` drives either system; only the storage
and the DB class differ (:mod:`bench.systems`).

Each workload function does its untimed setup and returns the timed part, a
callable that returns how many objects it wrote or read. They run in this order,
each starting from the state the previous ones left:

``add``
    one transaction creates ``count`` new objects in the worker's container.
``update``
    one transaction changes every object (they are in the pickle cache).
``read_cold``
    nothing cached: durable storages are closed and reopened (a new storage
    instance, a new DB, so no storage-level cache survives; the OS page cache does),
    in-memory ones have their connection caches emptied. Reads every object.
``read_warm``
    the connection's pickle cache is emptied, whatever the storage caches stays.
``read_hot``
    every object is already loaded in the pickle cache; reads through the container.
    (This and ``read_steamin`` repeat their pass until ~200,000 objects were read,
    and report the fastest pass.)
``read_steamin``
    every object is loaded and held in a list; reads an attribute of each (the
    cost of attribute access on a persistent object, no container lookup).
``read_prefetched``
    cold as ``read_cold``, but the connection is asked to ``prefetch`` every object
    (after loading the container) before they are read.

Layouts: ``mapping`` and ``oobtree`` keep the objects in one ``PersistentMapping`` or
``OOBTree``; ``multidb`` is a collection of two databases where each transaction
touches both: half the objects live in database ``a``, half in ``b``, and every
object of ``a`` refers to its partner in ``b`` (a cross-database reference), so
reads follow references from one database into the other.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from bench.objects import Item, payload
from bench.systems import Backend, Place, make_db

WORKLOADS = ["add", "update", "read_cold", "read_warm", "read_hot", "read_steamin",
             "read_prefetched"]
LAYOUTS = ["mapping", "oobtree", "multidb"]

#: The timed part of a workload: returns the objects it handled, or those and the
#: seconds to report (when it times its passes itself).
Timed = Callable[[], "int | tuple[int, float]"]

# Hot and steamin' reads take microseconds per pass at small counts; they repeat their
# pass over the objects until about this many objects were read and at least
# IN_MEMORY_SECONDS went by, and report the fastest pass (as timeit does). On a shared
# machine the CPU's speed drifts by 2x over seconds; a one-second series of passes
# catches a fast moment in each process, where a short series timed as a whole
# measured whichever moment it fell in. The figure stays objects read per second.
IN_MEMORY_READS = 200_000
IN_MEMORY_SECONDS = 1.0


class Session:
    """One worker's databases, connections and containers for one repetition."""

    def __init__(self, backend: Backend, place: Place, worker: int, layout: str,
                 count: int, in_memory_seconds: float = IN_MEMORY_SECONDS) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
        self.in_memory_seconds = in_memory_seconds
        self.backend = backend
        self.place = place
        self.worker = worker
        self.layout = layout
        self.names = ["a", "b"] if layout == "multidb" else ["a"]
        # Objects this worker writes: in multidb, pairs split over the two databases.
        self.count = (count // 2) * 2 if layout == "multidb" else count
        self.key = f"w{worker}"
        # Big enough that no object is evicted: "hot" must mean in the pickle cache.
        self.cache_size = 2 * count + 1000
        self.generation = 0  # the payload generation last committed (update bumps it)
        self.dbs: list = []
        self.conns: list = []

    def open(self) -> None:
        """Open fresh storages, DBs (one collection) and one connection group."""
        databases: dict = {}
        for name in self.names:
            storage = self.backend.build(self.place, name, self.worker)
            self.dbs.append(make_db(self.backend, storage, name, databases, self.cache_size))
        first = self.dbs[0].open()
        self.conns = [first] + [first.get_connection(name) for name in self.names[1:]]

    def close(self) -> None:
        transaction.abort()
        if self.conns:
            self.conns[0].close()  # closes the whole connection group
        for db in self.dbs:
            db.close()
        self.dbs, self.conns = [], []

    def prepare(self, workers: range | list[int]) -> None:
        """Create each worker's empty container (so workers never write the root)."""
        for conn in self.conns:
            root = conn.root()
            for w in workers:
                root[f"w{w}"] = OOBTree() if self.layout == "oobtree" else PersistentMapping()
        transaction.commit()

    def containers(self) -> list:
        return [conn.root()[self.key] for conn in self.conns]

    def make_cold(self) -> None:
        """Drop every cache this process has: reopen durable storages, else ghost all.

        Then collect garbage: a closed ZODB connection leaves its objects in reference
        cycles (``_p_jar`` and the cache), alive until the cyclic GC runs, where atoll
        frees them at once. Left there, they would keep the next objects loaded out of
        the memory they free, and later reads would measure that, not the code."""
        transaction.abort()
        if self.backend.durable:
            self.close()
            self.open()
        else:
            for conn in self.conns:
                conn.cacheMinimize()
        gc.collect()

    def touch_all(self) -> int:
        """Read every object through the containers (and, in multidb, the peers)."""
        n = 0
        for item in self.containers()[0].values():
            item.data
            n += 1
            if item.peer is not None:
                item.peer.data
                n += 1
        return n

    def all_items(self) -> list:
        return [item for container in self.containers() for item in container.values()]

    def check(self) -> None:
        """Fail loudly if the data read back is not what was written."""
        items = self.all_items()
        if len(items) != self.count:
            raise AssertionError(f"read {len(items)} objects, wrote {self.count}")
        for item in (items[0], items[-1]):
            if item.data != payload(item.n, self.generation):
                raise AssertionError(f"object {item.n} has stale data {item.data[:20]!r}")


def add(s: Session) -> Timed:
    def run() -> int:
        containers = s.containers()
        if s.layout == "multidb":
            a, b = containers
            for i in range(s.count // 2):
                mine, partner = Item(i), Item(i)
                mine.peer = partner
                s.conns[1].add(partner)  # partner belongs to database b
                a[i] = mine
                b[i] = partner
        else:
            container = containers[0]
            for i in range(s.count):
                container[i] = Item(i)
        transaction.commit()
        return s.count

    return run


def update(s: Session) -> Timed:
    items = s.all_items()

    def run() -> int:
        s.generation += 1
        for item in items:
            item.data = payload(item.n, s.generation)
        transaction.commit()
        return len(items)

    return run


def read_cold(s: Session) -> Timed:
    s.make_cold()
    return s.touch_all


def read_warm(s: Session) -> Timed:
    transaction.abort()
    for conn in s.conns:
        conn.cacheMinimize()
    return s.touch_all


def _passes(s: Session) -> int:
    return max(1, -(-IN_MEMORY_READS // s.count))


def _fastest_pass(s: Session, one_pass: Callable[[], int]) -> tuple[int, float]:
    """Run ``one_pass`` until about IN_MEMORY_READS objects were read and
    ``s.in_memory_seconds`` went by; the objects read and, as their time, the fastest
    pass's seconds times the passes run."""
    passes = _passes(s)
    objects, best, runs = 0, float("inf"), 0
    deadline = time.perf_counter() + s.in_memory_seconds
    while runs < passes or time.perf_counter() < deadline:
        start = time.perf_counter()
        objects += one_pass()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return objects, best * runs


def read_hot(s: Session) -> Timed:
    s.touch_all()

    def run() -> tuple[int, float]:
        return _fastest_pass(s, s.touch_all)

    return run


def steamin_pass(items: list) -> int:
    """One ``read_steamin`` pass: an attribute of every object of ``items``."""
    for item in items:
        item.data
    return len(items)


def read_steamin(s: Session) -> Timed:
    s.touch_all()
    items = s.all_items()

    def run() -> tuple[int, float]:
        return _fastest_pass(s, lambda: steamin_pass(items))

    return run


def read_prefetched(s: Session) -> Timed:
    s.make_cold()

    def run() -> int:
        for conn in s.conns:
            conn.prefetch(*conn.root()[s.key].values())
        return s.touch_all()

    return run


PHASES: dict[str, Callable[[Session], Timed]] = {
    "add": add,
    "update": update,
    "read_cold": read_cold,
    "read_warm": read_warm,
    "read_hot": read_hot,
    "read_steamin": read_steamin,
    "read_prefetched": read_prefetched,
}
