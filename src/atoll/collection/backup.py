"""Backups of live databases and collections, while writers go on.

``backup(source, destination)`` copies an SQLite database into a new file through
SQLite's online backup API, as of one moment (see
:mod:`atoll.storage.sqlite_backup`). For a collection of several SQLite files the
destination is a folder: writers of every file are held off just long enough to
fix one snapshot of each, so the copies hold the same transactions (a commit over
several databases is in all of them or in none); a configuration file for the
copies is written beside them, so the backup opens as a collection.

PostgreSQL databases are backed up with PostgreSQL's own tools (``pg_dump
--schema``, see ``docs/operations.md``); in-memory databases have nothing on disk
and are copied with :func:`atoll.copy` instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from atoll.collection.targets import TargetError, is_config, open_storages
from atoll.errors import Unsupported
from atoll.progress import Progress
from atoll.storage.base import Storage

__all__ = ["backup", "BackupStats"]


@dataclass
class BackupStats:
    """What a backup wrote: the file of each database (by name), its size in bytes,
    the configuration file of a collection's backup (else None), and the seconds."""

    files: dict[str, str] = field(default_factory=dict)
    size: int = 0
    config: str | None = None
    seconds: float = 0.0


def backup(source: Any, destination: str | os.PathLike[str], progress: Progress | None = None) -> BackupStats:
    """Back up ``source`` (a path, URI, ``.conf`` file, storage, DB or databases
    dict) into ``destination``: a new file for one database, a new (or empty)
    folder for a collection of several. Writers of the source go on meanwhile."""
    started = time.monotonic()
    destination = os.fspath(destination)
    storages, opened_here = open_storages(source, read_only=True)
    try:
        paths = {name: _file_of(name, storage) for name, storage in storages.items()}
        stats = BackupStats()
        if len(paths) == 1:
            (name, path), = paths.items()
            target = os.path.join(destination, os.path.basename(path)) if os.path.isdir(destination) else destination
            stats.files[name] = target
        else:
            _check_folder(destination)
            stats.files = _names_in(destination, paths)
        order = sorted(storages, key=lambda n: storages[n].sort_key())
        from atoll.storage.sqlite_backup import backup_files

        written = backup_files(
            [(paths[n], stats.files[n]) for n in order], progress=progress, lock_writers=len(order) > 1
        )
        stats.size = sum(written)
        if len(paths) > 1:
            stats.config = _write_config(destination, source, stats.files)
    finally:
        if opened_here:
            for storage in storages.values():
                storage.close()
    stats.seconds = time.monotonic() - started
    return stats


def _file_of(name: str, storage: Storage) -> str:
    """The SQLite file of ``storage``; Unsupported, saying what to do, for others."""
    path = getattr(storage, "path", None)
    kind = type(storage).__name__
    if kind == "SQLiteStorage" and isinstance(path, str):
        return path
    if kind == "PostgreSQLStorage":
        schema = getattr(storage, "schema", "atoll")
        raise Unsupported(
            f"database {name!r} is in PostgreSQL: back it up with pg_dump --schema={schema} "
            "(see docs/operations.md), or copy it with atoll.copy"
        )
    raise Unsupported(f"database {name!r} ({kind}) has no file to back up: copy it with atoll.copy")


def _check_folder(folder: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise TargetError(f"a collection is backed up into a folder, and {folder} is a file: give a new folder")
    if os.path.isdir(folder) and os.listdir(folder):
        raise TargetError(f"backup folder {folder} is not empty: give a new or empty folder")
    os.makedirs(folder, exist_ok=True)


def _names_in(folder: str, paths: dict[str, str]) -> dict[str, str]:
    """A file in ``folder`` for each database: its own file name unless two share one."""
    names = [os.path.basename(p) for p in paths.values()]
    unique = len(set(names)) == len(names)
    return {
        name: os.path.join(folder, os.path.basename(path) if unique else f"{name}.db")
        for name, path in paths.items()
    }


def _write_config(folder: str, source: Any, files: dict[str, str]) -> str:
    """A configuration file that opens the backup as a collection."""
    base = os.path.basename(os.fspath(source)) if is_config(source) else "collection.conf"
    path = os.path.join(folder, base)
    sections = [
        f"<zodb {name}>\n  <sqlitestorage>\n    path {os.path.abspath(file)}\n  </sqlitestorage>\n</zodb>\n"
        for name, file in files.items()
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("# A backup made by atoll.collection.backup; open it with atoll.open(this file).\n")
        f.write("\n".join(sections))
    return path
