"""What whole-collection operations and the ``atoll`` command are pointed at.

A *target* names one database or a collection: a storage object, a ``DB`` (meaning
its whole collection), a collection's ``databases`` dict, a path to an SQLite file,
a URI (``sqlite:///...``, ``postgresql://...``, ``memory://``), or a ZConfig file
(``.conf``) whose ``<zodb>`` sections form a collection.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from atoll.db import DB
from atoll.storage.base import Storage

__all__ = ["TargetError", "open_storages", "open_databases", "is_config"]

#: File name endings that mean a ZConfig file rather than a database file.
CONFIG_SUFFIXES = (".conf", ".cfg", ".zconfig")


class TargetError(ValueError):
    """A target that names nothing usable (missing file, folder, NUL byte, bad URI)."""


def is_config(target: object) -> bool:
    """Whether ``target`` is a path to a ZConfig file."""
    return isinstance(target, (str, os.PathLike)) and os.fspath(target).endswith(CONFIG_SUFFIXES)


def open_storages(target: Any, *, read_only: bool = False, must_exist: bool = True) -> tuple[dict[str, Storage], bool]:
    """The storages ``target`` names, by database name, and whether they were opened
    here (then the caller closes them). A single database is named ``main``."""
    if isinstance(target, DB):
        return {name: db.storage for name, db in target.databases.items()}, False
    if isinstance(target, Mapping):
        return {name: db.storage for name, db in target.items()}, False
    if isinstance(target, Storage):
        return {"main": target}, False
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str):
        raise TypeError(f"a target is a storage, DB, databases dict, path or URI, not {type(target).__name__}")
    if "\x00" in target:
        raise TargetError("a target cannot contain a NUL byte")
    from atoll.storage.targets import is_uri, open_storage

    if is_uri(target):
        return {"main": open_storage(_with_read_only(target) if read_only else target)}, True
    if is_config(target):
        return _config_storages(target, read_only), True
    if must_exist and not os.path.exists(target):
        raise TargetError(f"no database at {target}: give the path of an existing atoll file, a URI, or a .conf file")
    if os.path.isdir(target):
        raise TargetError(f"{target} is a folder: give the path of an atoll database file inside it")
    from atoll.storage.sqlite import SQLiteStorage

    return {"main": SQLiteStorage(target, read_only=read_only)}, True


def open_databases(target: Any, *, read_only: bool = False, must_exist: bool = True) -> dict[str, DB]:
    """A collection (name -> DB) over the storages ``target`` names; a ``DB`` or a
    ``databases`` dict is returned as its collection. Close what this opened with
    ``for db in databases.values(): db.close()``."""
    if isinstance(target, DB):
        return target.databases
    if isinstance(target, Mapping):
        return dict(target)
    if is_config(target):
        return _config_databases(os.fspath(target), read_only)
    storages, _ = open_storages(target, read_only=read_only, must_exist=must_exist)
    databases: dict[str, DB] = {}
    try:
        for name, storage in storages.items():
            DB(storage, database_name=name, databases=databases)
    except BaseException:
        for storage in storages.values():
            storage.close()
        raise
    return databases


def _with_read_only(uri: str) -> str:
    """``uri`` with ``read_only=true``, where its scheme has the option."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme.lower() == "memory":
        return uri
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "read_only"]
    query.append(("read_only", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _config_factories(path: str, read_only: bool) -> Any:
    """The file's database factories, their storages set read-only if asked."""
    from atoll.config import _load, getDbSchema

    if not os.path.isfile(path):
        raise TargetError(f"no config file at {path}: give the path of an existing .conf file")
    factories = _load(getDbSchema(), path).database  # type: ignore[attr-defined]
    if read_only:
        for factory in factories:
            section = factory.section.storage.section
            if hasattr(section, "read_only"):
                section.read_only = True
    return factories


def _config_databases(path: str, read_only: bool) -> dict[str, DB]:
    """Every database of the file, with all its settings (cache sizes, class aliases)."""
    databases: dict[str, DB] = {}
    _config_factories(path, read_only).open(databases)
    return databases


def _config_storages(path: str, read_only: bool) -> dict[str, Storage]:
    storages: dict[str, Storage] = {}
    try:
        for factory in _config_factories(path, read_only):
            name = factory.database_name
            if name in storages:
                raise TargetError(f"database name {name!r} is used twice in {path}")
            storages[name] = factory.section.storage.open()
    except BaseException:
        for storage in storages.values():
            storage.close()
        raise
    return storages
