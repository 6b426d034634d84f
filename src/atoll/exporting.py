"""Export an object and everything it reaches to a file; import such a file.

ZODB's ``Connection.exportFile(oid, f)`` and ``importFile(f)``, for collections:

- **Export** walks from one object through every strong reference, across the
  databases of the connection's collection, as the connection's snapshot sees them
  (committed state: commit first to include this transaction's changes), and
  streams each record to the file as it is read (:mod:`atoll.exportfile`), with
  the database it came from. References are found by
  :func:`atoll.serialize.references`, which imports nothing. A reference that
  cannot be followed (to a database outside the collection, or to an object that
  is not there) *leaves* the set: it is written to the file and listed in
  :attr:`ExportStats.leaving`. Weak references are not followed.
- **Import** checks the whole file first (nothing is written from a file that is
  not an atoll export, is damaged or cut short), gives every record a new oid in
  its destination database, rewrites the references inside the set to the new
  oids (:mod:`atoll.relocate`, on the bytes: no class is imported and nothing of
  the records runs; loading the objects later goes through the database's class
  policy as always) and adds the records to the connection's transaction, as
  objects placed in their databases. They are written when the transaction
  commits; an abort forgets them. Importing a file twice gives two independent
  copies.

Where records go: a set from one database goes into the connection's database,
whatever its name; a set that spans several goes into the databases of the same
names in the connection's collection.

References leaving the set: by default an import refuses a file that has any
(:class:`~atoll.errors.ExportError`, one line naming how many and the first),
since in another database the same oid is another object or none.
``leaving="keep"`` imports them pointing at the same database and oid: right when
the destination holds those objects (importing back into the collection the export
came from, or into a copy of it). A weak reference to an object outside the set is
pointed at an oid that holds nothing, so it reads as gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Iterator

from persistent import Persistent

from atoll.arguments import check_oid
from atoll.errors import ExportError, POSKeyError, ReadOnlyError, ReadOnlyHistoryError
from atoll.exportfile import ExportReader, ExportWriter
from atoll.ids import oid_repr, z64
from atoll.progress import Progress, Reporter
from atoll.relocate import relocate_references
from atoll.savepoint import ADDED, NEW, SavepointStore
from atoll.serialize import references
from atoll.storage.base import DELETED

if TYPE_CHECKING:
    from atoll.connection import Connection

__all__ = ["ExportStats", "ImportStats", "export_file", "import_file", "LEAVING"]

#: What an import may do with references leaving the set (see the module docstring).
LEAVING = ("refuse", "keep")
#: Oids per load while exporting.
BATCH = 1000
_FLUSH = 1 << 22  # bytes of imported records gathered before a write to the savepoint store

#: A reference leaving the exported set: (database, oid, referenced database, referenced oid).
Leaving = tuple[str, bytes, str, bytes]


def _leaving_text(leaving: Leaving) -> str:
    database, oid, to_database, to_oid = leaving
    return f"{database} {oid_repr(oid)} -> {to_database} {oid_repr(to_oid)}"


@dataclass
class _Moved:
    """What an export wrote or an import added (the two summaries' common part)."""

    root: tuple[str, bytes]
    records: int = 0
    size: int = 0
    per_database: dict[str, int] = field(default_factory=dict)
    leaving: list[Leaving] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, database: str, data: bytes) -> None:
        """One more record of ``database``, of ``data``."""
        self.records += 1
        self.size += len(data)
        self.per_database[database] = self.per_database.get(database, 0) + 1

    def _summary(self, verb: str) -> str:
        where = ", ".join(f"{name}: {count:,}" for name, count in self.per_database.items())
        return f"{verb} {self.records:,} records ({where}), {self.size:,} bytes in {self.seconds:.1f} s"


@dataclass
class ExportStats(_Moved):
    """What an export wrote. ``root``: ``(database, oid)`` exported; ``records``
    and ``size`` (bytes of record data); ``per_database``: records by database
    name; ``leaving``: references to objects left out (see the module docstring),
    as ``(database, oid, referenced database, referenced oid)``."""

    def __str__(self) -> str:
        line = self._summary("exported")
        if self.leaving:
            line += f"; {len(self.leaving):,} references leave the set (first: {_leaving_text(self.leaving[0])})"
        return line


@dataclass
class ImportStats(_Moved):
    """What an import added. ``root``: ``(database, new oid)`` of the imported
    root object; ``records``, ``size`` (bytes of record data), ``per_database``
    (records by destination database name); ``leaving``: the file's references to
    objects outside the set, kept pointing at the same oids."""

    def __str__(self) -> str:
        line = self._summary("imported")
        if self.leaving:
            line += f"; {len(self.leaving):,} references outside the set kept"
        return line


@contextlib.contextmanager
def _file(target: str | os.PathLike | IO[bytes], mode: str) -> Iterator[tuple[IO[bytes], str]]:
    """A binary file for ``target`` (a path, opened and closed here, or a file),
    and its name for messages. For reading, a file that cannot seek is spooled
    to a temporary one (an import reads the file twice)."""
    if isinstance(target, (str, os.PathLike)):
        name = os.fspath(target)
        if mode == "rb" and os.path.isdir(name):
            raise ExportError(f"{name} is a folder, not an export file")
        with open(name, mode) as opened:
            try:
                yield opened, name
            except BaseException:
                if mode == "wb":
                    opened.close()
                    os.remove(name)  # an export that failed leaves no partial file
                raise
        return
    name = getattr(target, "name", None)
    name = name if isinstance(name, str) else "the file"
    if mode == "rb" and not (hasattr(target, "seekable") and target.seekable()):
        with tempfile.TemporaryFile(prefix="atoll-import-") as spooled:
            shutil.copyfileobj(target, spooled)
            spooled.seek(0)
            yield spooled, name
        return
    yield target, name


def export_file(
    connection: Connection,
    oid: bytes,
    file: str | os.PathLike | IO[bytes],
    progress: Progress | None = None,
) -> ExportStats:
    """Write the object ``oid`` of ``connection``'s database and everything it
    reaches to ``file`` (a path or a binary file open for writing); see the
    module docstring. POSKeyError if there is no such object."""
    check_oid(oid)
    connection._check_open()
    started = time.monotonic()
    home = connection.db().database_name
    stats = ExportStats((home, oid))
    views: dict[str, Any] = {}

    def view(name: str) -> Any:
        if name not in views:
            try:
                views[name] = connection.get_connection(name)._view
            except KeyError:
                views[name] = None  # a database outside the collection
        return views[name]

    visited: dict[str, set[bytes]] = {home: {oid}}
    # per database: (oid, the record that refers to it, or None for the root)
    queues: dict[str, deque[tuple[bytes, tuple[str, bytes] | None]]] = {home: deque([(oid, None)])}
    reporter = Reporter(progress, "exporting", unit="records")
    with _file(file, "wb") as (out, _):
        writer = ExportWriter(out, home, oid)

        def leave(referrer: tuple[str, bytes], to_database: str, to_oid: bytes) -> None:
            stats.leaving.append((*referrer, to_database, to_oid))
            writer.leaving(*referrer, to_database, to_oid)

        while any(queues.values()):
            for name, queue in list(queues.items()):
                if not queue:
                    continue
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
                found = view(name).load_many([each for each, _ in batch])
                for each, referrer in batch:
                    record = found.get(each)
                    if record is None or record[0] == DELETED:
                        if referrer is None:
                            raise POSKeyError(each, name)
                        leave(referrer, name, each)
                        continue
                    data = record[0]
                    writer.record(name, each, data)
                    stats.count(name, data)
                    for database, target in references(data):
                        target_database = name if database is None else database
                        seen = visited.get(target_database)
                        if seen is None:
                            if view(target_database) is None:
                                leave((name, each), target_database, target)
                                continue
                            seen = visited[target_database] = set()
                            queues[target_database] = deque()
                        if target not in seen:
                            seen.add(target)
                            queues[target_database].append((target, (name, each)))
                reporter.advance(len(batch))
        writer.finish()
    stats.seconds = time.monotonic() - started
    reporter.done(str(stats))
    return stats


def import_file(
    connection: Connection,
    file: str | os.PathLike | IO[bytes],
    *,
    leaving: str = "refuse",
    progress: Progress | None = None,
) -> tuple[Persistent, ImportStats]:
    """Add the objects of an export ``file`` (a path or a binary file) to
    ``connection``'s transaction, with new oids; return the imported root object
    (not yet reachable from anything: attach it) and :class:`ImportStats`. See
    the module docstring for where records go and for ``leaving``."""
    if leaving not in LEAVING:
        raise ValueError(f"leaving must be one of {', '.join(LEAVING)}, not {leaving!r}")
    connection._check_open()
    started = time.monotonic()
    with _file(file, "rb") as (source, name):
        reader = ExportReader(source, name)
        contents = reader.scan()
        targets = _destinations(connection, list(contents.records), name)
        if contents.leaving:
            _check_leaving(connection, contents.leaving, targets, leaving, name)
        mapping: dict[tuple[str, bytes], bytes] = {}
        for database, oids in contents.records.items():
            new_oid = targets[database]._db.storage.new_oid
            for oid in oids:
                mapping[database, oid] = new_oid()
        root_database, root_oid = contents.root
        destination = targets[root_database]
        stats = ImportStats((destination.db().database_name, mapping[contents.root]), leaving=contents.leaving)
        reporter = Reporter(progress, "importing", total=contents.count, unit="records")
        undo = _Undo()
        try:
            _write(reader, targets, mapping, stats, reporter, undo)
            root = destination.get(mapping[contents.root])
        except BaseException:
            undo.run()
            raise
    stats.seconds = time.monotonic() - started
    reporter.done(str(stats))
    return root, stats


def _destinations(connection: Connection, sources: list[str], name: str) -> dict[str, Connection]:
    """The connection each source database's records go into (module docstring)."""
    if len(sources) == 1:
        targets = {sources[0]: connection}
    else:
        targets = {}
        for source in sources:
            try:
                targets[source] = connection.get_connection(source)
            except KeyError:
                have = ", ".join(sorted(connection.db().databases))
                raise ExportError(
                    f"{name} holds objects of databases {', '.join(sources)}; the destination collection "
                    f"has no database {source!r} (it has: {have})"
                ) from None
    for target in targets.values():
        if target.before is not None:
            raise ReadOnlyHistoryError(f"cannot import into a historical connection to {target.db().database_name!r}")
        if target.db().storage.read_only:
            raise ReadOnlyError(f"cannot import into {target.db().database_name!r}: its storage is read-only")
    return targets


def _check_leaving(
    connection: Connection, found: list[Leaving], targets: dict[str, Connection], leaving: str, name: str
) -> None:
    count = len(found)
    if leaving == "refuse":
        raise ExportError(
            f"{name} has {count:,} reference{'s' if count != 1 else ''} to objects outside the exported set "
            f"(first: {_leaving_text(found[0])}); import with leaving='keep' (atoll import --keep-leaving) "
            "to keep them pointing at the same oids"
        )
    known = connection.db().databases
    for each in found:
        if each[2] not in targets and each[2] not in known:
            raise ExportError(
                f"{name} refers to database {each[2]!r} outside the exported set (first: {_leaving_text(each)}), "
                "which the destination collection does not have"
            )


class _Undo:
    """Takes an import back out of the savepoint stores it was written to."""

    def __init__(self) -> None:
        self.positions: dict[Connection, int | None] = {}  # position before, None: store made here

    def store(self, connection: Connection) -> SavepointStore:
        """The connection's savepoint store, remembering where the import began."""
        if connection not in self.positions:
            saved = connection._saved
            self.positions[connection] = None if saved is None else saved.position
            if saved is None:
                connection._saved = SavepointStore()
            connection._join()
        assert connection._saved is not None
        return connection._saved

    def run(self) -> None:
        for connection, position in self.positions.items():
            saved = connection._saved
            if saved is None:
                continue
            if position is None:
                saved.close()
                connection._saved = None
            else:
                for oid, _, _ in saved.rollback(position):
                    connection._disown(oid)


def _write(
    reader: ExportReader,
    targets: dict[str, Connection],
    mapping: dict[tuple[str, bytes], bytes],
    stats: ImportStats,
    reporter: Reporter,
    undo: _Undo,
) -> None:
    """Relocate every record and add it to its connection's savepoint store."""
    pending: dict[Connection, list[tuple[bytes, bytes, int, bytes]]] = {}
    size = 0
    for database, oid, data in reader.records():
        connection = targets[database]
        own = connection.db().database_name
        referenced = connection._referenced_databases

        def relocate(name: str | None, ref: bytes, weak: bool, database: str = database) -> bytes | None:
            where = database if name is None else name
            new = mapping.get((where, ref))
            if new is None and weak:  # a weak reference leaving the set: make it read as gone
                try:
                    other = targets[where] if where in targets else connection.get_connection(where)
                except KeyError:  # a database the destination lacks: it reads as gone as it is
                    other = None
                if other is not None:
                    new = other._db.storage.new_oid()  # holds nothing
            if name is not None and name != own:
                referenced.add(name)  # noted in the collection at commit (membership)
            return new

        relocated = relocate_references(data, relocate)
        pending.setdefault(connection, []).append((mapping[database, oid], z64, NEW | ADDED, relocated))
        size += len(relocated)
        stats.count(own, relocated)
        reporter.advance()
        if size >= _FLUSH:
            _flush(pending, undo)
            size = 0
    _flush(pending, undo)


def _flush(pending: dict[Connection, list[tuple[bytes, bytes, int, bytes]]], undo: _Undo) -> None:
    for connection, records in pending.items():
        if records:
            undo.store(connection).write(records)
            records.clear()
