"""Export and import between collections, by target: what ``atoll export`` and
``atoll import`` call.

:func:`export_objects` writes an object and everything it reaches (across the
databases of its collection) to a file; :func:`import_objects` adds such a file to
a database or collection in one transaction, under a key of the root of the
database the exported object lands in. The work is :mod:`atoll.exporting`'s (file
format, new oids, references rewritten without importing any class, references
leaving the set refused unless kept); this module opens what a target names and
commits.
"""

from __future__ import annotations

import os
from typing import IO, Any

import transaction
from persistent import Persistent

from atoll.connection import Connection
from atoll.db import DB
from atoll.exporting import ExportStats, ImportStats, export_file, import_file
from atoll.progress import Progress

__all__ = ["export_objects", "import_objects", "ExportStats", "ImportStats"]


def _pick(databases: dict[str, DB], database: str | None, target: Any) -> DB:
    if database is None:
        return next(iter(databases.values()))
    try:
        return databases[database]
    except KeyError:
        raise KeyError(f"no database {database!r} in {target} (it has: {', '.join(databases)})") from None


def _open(target: Any, read_only: bool) -> tuple[dict[str, DB], bool]:
    """The collection ``target`` names, and whether it was opened here."""
    from atoll.collection.targets import open_databases

    if isinstance(target, DB):
        return target.databases, False
    if isinstance(target, dict):
        return target, False
    return open_databases(target, read_only=read_only), True


def export_objects(
    source: Connection | DB | Any,
    obj_or_oid: Persistent | bytes,
    path: str | os.PathLike | IO[bytes],
    *,
    database: str | None = None,
    progress: Progress | None = None,
) -> ExportStats:
    """Export ``obj_or_oid`` and everything it reaches to ``path`` (or a binary
    file). ``source`` is a connection, a DB (with its collection), a ``databases``
    dict or a target (path, URI, ``.conf`` file, opened read-only here); an oid
    is one of ``database`` (default: the connection's, or the first database).
    A persistent object is exported through its own connection."""
    if isinstance(obj_or_oid, Persistent):
        jar, oid = obj_or_oid._p_jar, obj_or_oid._p_oid
        if jar is None or oid is None:
            raise ValueError(f"{obj_or_oid!r} is not stored in a database yet: commit it first")
        return export_file(jar, oid, path, progress)
    if isinstance(source, Connection):
        connection = source if database is None else source.get_connection(database)
        return export_file(connection, obj_or_oid, path, progress)
    databases, opened = _open(source, read_only=True)
    try:
        db = _pick(databases, database, source)
        connection = db.open(transaction.TransactionManager())
        try:
            return export_file(connection, obj_or_oid, path, progress)
        finally:
            connection.transaction_manager.abort()
            connection.close()
    finally:
        if opened:
            for each in databases.values():
                each.close()


def import_objects(
    destination: DB | Any,
    path: str | os.PathLike | IO[bytes],
    key: str,
    *,
    database: str | None = None,
    leaving: str = "refuse",
    note: str | None = None,
    progress: Progress | None = None,
) -> ImportStats:
    """Import the export ``path`` (or a binary file) into ``destination`` (a DB
    with its collection, a ``databases`` dict or a target: path, URI, ``.conf``
    file) in one transaction, storing the imported root object as ``root[key]``
    of the database it lands in (ValueError, writing nothing, if that key is
    taken). ``database``: where a set from one database goes (default: the
    database of the same name, else the first); a set from several goes into the
    databases of the same names. ``leaving``: see :mod:`atoll.exporting`."""
    databases, opened = _open(destination, read_only=False)
    try:
        db = _destination(databases, database, path, destination)
        manager = transaction.TransactionManager()
        connection = db.open(manager)
        try:
            txn = manager.begin()
            _check_key(connection.root(), key, db)  # where the root lands, nearly always
            root, stats = import_file(connection, path, leaving=leaving, progress=progress)
            home = root._p_jar.root()
            _check_key(home, key, root._p_jar.db())
            home[key] = root
            txn.note(note or f"atoll import {os.fspath(path) if isinstance(path, (str, os.PathLike)) else key}")
            manager.commit()
            return stats
        finally:
            manager.abort()
            connection.close()
    finally:
        if opened:
            for each in databases.values():
                each.close()


def _check_key(root: Any, key: str, db: DB) -> None:
    if key in root:
        raise ValueError(f"the root of database {db.database_name!r} already has a key {key!r}: choose another key")


def _destination(databases: dict[str, DB], database: str | None, path: Any, target: Any) -> DB:
    """The database a set from one database goes into: ``database``, else the one
    named as the set's, else the first (see :func:`import_objects`)."""
    if database is not None or len(databases) == 1:
        return _pick(databases, database, target)
    from atoll.exportfile import ExportReader

    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as source:
            root_database = ExportReader(source, os.fspath(path)).root[0]
    elif hasattr(path, "seekable") and path.seekable():
        at = path.tell()
        try:
            root_database = ExportReader(path).root[0]
        finally:
            path.seek(at)
    else:
        return _pick(databases, None, target)
    return databases.get(root_database) or _pick(databases, None, target)
