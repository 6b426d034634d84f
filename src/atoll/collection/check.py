"""Check a collection: what would fail to load, found before an application trips on it.

:func:`check` walks every database from its root, across cross-database references,
over the newest committed state, and reports each problem with the database, the
oid, a kind, and the path of references from a root that leads to it:

``dangling``
    a reference to an object that does not exist (in the same database or another).
``unknown-database``
    a reference to a database that is not in the collection.
``unreadable``
    a record that cannot be read as an object record (damaged bytes).
``missing-class``
    a record whose class cannot be imported (renamed or removed code).
``damaged``
    what a storage's own ``verify()`` finds (checksums), where the storage has one.

Records are read without running application code: references come from
:func:`atoll.serialize.references`; a class is looked up by name (its module is
imported, as loading the object would).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import pickle
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from atoll.collection.marking import BATCH, MarkSet
from atoll.errors import POSKeyError
from atoll.ids import p64, u64
from atoll.progress import ProgressStep
from atoll.serialize import references as record_references
from atoll.storage.base import Progress

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["Problem", "CheckReport", "check", "PATHS_UP_TO"]

#: Paths from a root are remembered for up to this many objects per check (the
#: parent of each object costs about 100 bytes); past it, problems have no path.
PATHS_UP_TO = 2_000_000


@dataclass(frozen=True)
class Problem:
    """One problem: ``database`` and ``oid`` of the object it concerns, ``kind`` (see
    the module docstring), ``detail`` in words, and ``path``, the chain of
    ``(database, oid)`` from a root to the object (empty when not known)."""

    database: str
    oid: bytes
    kind: str
    detail: str
    path: tuple[tuple[str, bytes], ...] = ()

    def __str__(self) -> str:
        where = f"{self.database}:0x{u64(self.oid):x}"
        line = f"{where}: {self.kind}: {self.detail}"
        if self.path:
            line += " (path: " + " -> ".join(f"{db}:0x{u64(oid):x}" for db, oid in self.path) + ")"
        return line


@dataclass
class CheckReport:
    """What :func:`check` found: ``problems`` (a list of :class:`Problem`) and the
    number of objects read per database; ``ok`` when there is no problem."""

    problems: list[Problem] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the check found no problem."""
        return not self.problems

    def __str__(self) -> str:
        counted = ", ".join(f"{name}: {count:,} objects" for name, count in self.objects.items())
        if self.ok:
            return f"no problems ({counted})"
        return "\n".join([f"{len(self.problems)} problem(s) ({counted})", *map(str, self.problems)])


class _ClassName:
    """Stands in for a class while a record's class part is read by name."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _ClassReader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _ClassName(module, name)

    def persistent_load(self, ref: Any) -> None:
        return None


def record_class_name(data: bytes) -> tuple[str, str]:
    """``(module, name)`` of the class a record names, without importing it."""
    meta = _ClassReader(io.BytesIO(data)).load()
    if isinstance(meta, tuple) and meta:
        meta = meta[0]
    if isinstance(meta, _ClassName):
        return meta.module, meta.name
    if isinstance(meta, tuple) and len(meta) == 2 and all(isinstance(part, str) for part in meta):
        return meta[0], meta[1]
    raise pickle.UnpicklingError(f"the record's class part is {type(meta).__name__}, not a class")


def _class_missing(module: str, name: str, cache: dict[tuple[str, str], str | None]) -> str | None:
    """Why ``module.name`` cannot be imported, or None if it can."""
    key = (module, name)
    if key in cache:
        return cache[key]
    reason: str | None = None
    try:
        found = sys.modules.get(module)
        if found is None:
            if importlib.util.find_spec(module) is None:
                reason = f"module {module!r} cannot be found"
            else:
                found = importlib.import_module(module)
        if found is not None:
            target: Any = found
            for part in name.split("."):
                target = getattr(target, part)
            if not isinstance(target, type):
                reason = f"{module}.{name} is not a class"
    except AttributeError:
        reason = f"module {module!r} has no class {name!r}"
    except Exception as e:  # an import that fails in any way leaves the class missing
        reason = f"importing {module!r} fails: {type(e).__name__}: {e}"
    cache[key] = reason
    return reason


class _Checker:
    def __init__(self, databases: Mapping[str, DB], progress: Progress | None) -> None:
        self.databases = databases
        self.report = CheckReport(objects={name: 0 for name in databases})
        self.progress = progress
        self.views = {name: db.storage.open_view() for name, db in databases.items()}
        self.seen = {name: MarkSet() for name in databases}
        self.todo: dict[str, list[int]] = {name: [] for name in databases}
        self.parents: dict[tuple[str, int], tuple[str, int]] = {}
        self.classes: dict[tuple[str, str], str | None] = {}
        self.damaged: set[tuple[str, int]] = set()  # reported by load(): no other problem for them
        self.read = 0

    def close(self) -> None:
        for view in self.views.values():
            view.release()

    def path(self, database: str, oid: int) -> tuple[tuple[str, bytes], ...]:
        chain = [(database, oid)]
        while chain[-1] in self.parents:
            chain.append(self.parents[chain[-1]])
        if chain[-1][1] != 0:
            return ()  # its parents were not remembered
        return tuple((db, p64(number)) for db, number in reversed(chain))

    def problem(self, database: str, oid: int, kind: str, detail: str) -> None:
        self.report.problems.append(Problem(database, p64(oid), kind, detail, self.path(database, oid)))

    def visit(self, database: str, oid: int, parent: tuple[str, int] | None) -> None:
        if self.seen[database].add(oid):
            self.todo[database].append(oid)
            if parent is not None and len(self.parents) < PATHS_UP_TO:
                self.parents[(database, oid)] = parent

    def run(self) -> CheckReport:
        for name in self.databases:
            self.visit(name, 0, None)
        busy = True
        while busy:
            busy = False
            for name, todo in self.todo.items():
                while todo:
                    busy = True
                    batch = todo[-BATCH:]
                    del todo[-BATCH:]
                    self.check_batch(name, batch)
        for name, db in self.databases.items():
            self.verify(name, db)
        if self.progress is not None:
            line = f"checked {self.read:,} objects: {len(self.report.problems)} problem(s)"
            self.progress(ProgressStep("checking", self.read, self.read, "objects", True, line))
        return self.report

    def load(self, name: str, batch: list[int]) -> dict[bytes, tuple[bytes, bytes]]:
        """The records of ``batch``; one by one when the batch cannot be read whole
        (a storage that checks its records refuses a damaged one), reporting those
        that cannot be loaded."""
        view = self.views[name]
        try:
            return view.load_many([p64(oid) for oid in batch])
        except POSKeyError:
            raise
        except Exception:
            pass
        records = {}
        for oid in batch:
            try:
                records[p64(oid)] = view.load(p64(oid))
            except POSKeyError:
                continue
            except Exception as e:
                self.problem(name, oid, "damaged", f"the record cannot be loaded: {type(e).__name__}: {e}")
                self.report.objects[name] += 1
                self.read += 1
                self.damaged.add((name, oid))
        return records

    def check_batch(self, name: str, batch: list[int]) -> None:
        records = self.load(name, batch)
        for oid in batch:
            found = records.get(p64(oid))
            if (name, oid) in self.damaged:
                continue
            if found is None:
                parent = self.parents.get((name, oid))
                if oid == 0:
                    continue  # an empty database (no root yet)
                source = f" (referred to by {parent[0]}:0x{parent[1]:x})" if parent else ""
                self.problem(name, oid, "dangling", f"object 0x{oid:x} does not exist in {name!r}{source}")
                continue
            self.report.objects[name] += 1
            self.read += 1
            self.check_record(name, oid, found[0])
        if self.progress is not None and self.read % 50_000 < len(batch):
            self.progress(ProgressStep("checking", self.read, None, "objects"))

    def check_record(self, name: str, oid: int, data: bytes) -> None:
        try:
            module, class_name = record_class_name(data)
            refs = record_references(data)
        except Exception as e:
            self.problem(name, oid, "unreadable", f"the record cannot be read: {type(e).__name__}: {e}")
            return
        missing = _class_missing(module, class_name, self.classes)
        if missing is not None:
            self.problem(name, oid, "missing-class", missing)
        for database, ref in refs:
            target = name if database is None else database
            if target not in self.databases:
                self.problem(
                    name, oid, "unknown-database",
                    f"refers to 0x{u64(ref):x} in database {target!r}, which is not in the collection",
                )
                continue
            self.visit(target, u64(ref), (name, oid))

    def verify(self, name: str, db: DB) -> None:
        """Report what the storage's own integrity check (``verify()``: every stored
        revision against its checksum) finds, where the storage has one."""
        verify = getattr(db.storage, "verify", None)
        if verify is None:
            return
        for damaged in verify():
            oid = u64(damaged.oid)
            if (name, oid) in self.damaged:
                continue  # already reported when the walk could not load it
            tid = getattr(damaged, "tid", None)
            revision = f"revision {tid.hex()}: " if tid else ""
            self.problem(name, oid, "damaged", f"{revision}{damaged.detail}")


def check(databases: Mapping[str, DB], progress: Progress | None = None) -> CheckReport:
    """Check every database of a collection (the shared name -> DB dict); see the
    module docstring for what is looked for. Reads only; ``progress`` hears counts."""
    if not databases:
        raise ValueError("no databases to check: pass the collection's databases dict (name -> DB)")
    checker = _Checker(databases, progress)
    try:
        return checker.run()
    finally:
        checker.close()
