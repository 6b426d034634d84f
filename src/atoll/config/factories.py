"""What the sections of a configuration file turn into: factories that open storages
and databases.

ZConfig calls each section type's ``datatype`` (named in ``component.xml``) with the
parsed section; the result is a factory that remembers the section and opens its
storage or database on demand, so that parsing a file creates nothing. Each section
maps one to one onto a constructor; a key left out of the file is not passed, so the
constructor's default applies and there is one place that defines each default.

A file's ``<zodb>`` sections become a :class:`DatabaseFactories` list, which opens
them all into one multi-database collection and, if any fails, closes what it had
opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # DB is imported when a database is opened, not when parsing.
    from ZConfig.matcher import SectionValue

    from atoll.db import DB
    from atoll.storage.base import Storage

__all__ = [
    "StorageFactory",
    "MappingStorageFactory",
    "MemoryStorageFactory",
    "SQLiteStorageFactory",
    "PostgreSQLStorageFactory",
    "DatabaseFactory",
    "DatabaseFactories",
    "non_negative_int",
    "non_negative_byte_size",
    "non_negative_interval",
    "synchronous",
    "class_alias",
    "database_schema_root",
]


def non_negative_int(text: str) -> int:
    """ZConfig datatype: an integer >= 0 (sizes and counts)."""
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {value}")
    return value


def non_negative_byte_size(text: str) -> int:
    """ZConfig datatype: a byte size (``5MB``, ``0``) >= 0."""
    from ZConfig.datatypes import Registry

    value = Registry().get("byte-size")(text)
    if value < 0:
        raise ValueError(f"expected a byte size >= 0, got {text!r}")
    return value


def non_negative_interval(text: str) -> float:
    """ZConfig datatype: a time interval (``30``, ``5m``, ``2h``) >= 0, in seconds."""
    from ZConfig.datatypes import Registry

    value = Registry().get("time-interval")(text)
    if value < 0:
        raise ValueError(f"expected a time interval >= 0, got {text!r}")
    return value


def synchronous(text: str) -> str:
    """ZConfig datatype: SQLite's durability setting, ``full`` or ``normal``."""
    value = text.lower()
    if value not in ("full", "normal"):
        raise ValueError(f"synchronous must be full or normal, not {text!r}")
    return value


def class_alias(text: str) -> tuple[str, str]:
    """ZConfig datatype: ``old.name new.name`` (a ``class-alias`` line)."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"class-alias takes an old and a new dotted name, not {text!r}")
    return parts[0], parts[1]


def _given(section: SectionValue, keys: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for the keys of ``section`` that the file sets."""
    kwargs = {}
    for key, argument in keys.items():
        value = getattr(section, key)
        if value is not None:
            kwargs[argument] = value
    return kwargs


def already_there(name: str) -> ValueError:
    """The error DB raises for a name already in the collection, raised here before
    anything is opened."""
    return ValueError(f"database_name {name!r} already in databases")


class StorageFactory(ABC):
    """Base of the storage sections' factories: ``open()`` returns a new storage."""

    def __init__(self, section: SectionValue) -> None:
        self.section = section  # the parsed section; read by open()
        self.name: str | None = section.getSectionName()

    #: The section's optional keys (as ZConfig attributes) and the storage
    #: class's keyword argument each one sets; keys left out are not passed.
    keys: dict[str, str] = {}

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments ``open()`` passes to the storage class."""
        return _given(self.section, self.keys)

    @abstractmethod
    def open(self) -> Storage:
        """Create the storage this section describes."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class MappingStorageFactory(StorageFactory):
    """``<mappingstorage/>``, ZODB's name for an in-memory storage: a
    :class:`~atoll.storage.MemoryStorage` (history-preserving, which a ZODB
    MappingStorage user does not notice)."""

    keys = {"name": "name"}

    def open(self) -> Storage:
        from atoll.storage.memory import MemoryStorage

        return MemoryStorage(**self.arguments())


class MemoryStorageFactory(MappingStorageFactory):
    """``<memorystorage/>``: :class:`atoll.storage.MemoryStorage`, or with
    ``keep-history false`` the history-free
    :class:`~atoll.storage.MinimalMemoryStorage`."""

    def open(self) -> Storage:
        from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage

        keep_history = self.section.keep_history is not False
        cls = MemoryStorage if keep_history else MinimalMemoryStorage
        return cls(**self.arguments())


class SQLiteStorageFactory(StorageFactory):
    """``<sqlitestorage>``: :class:`atoll.storage.SQLiteStorage`."""

    keys = {
        "read_only": "read_only",
        "keep_history": "keep_history",
        "synchronous": "synchronous",
        "cache_size_bytes": "cache_size_bytes",
        "commit_lock_timeout": "commit_lock_timeout",
    }

    def open(self) -> Storage:
        from atoll.storage.sqlite import SQLiteStorage

        return SQLiteStorage(self.section.path, **self.arguments())


class PostgreSQLStorageFactory(StorageFactory):
    """``<postgresqlstorage>``: :class:`atoll.storage.PostgreSQLStorage`."""

    keys = {
        "schema": "schema",
        "read_only": "read_only",
        "keep_history": "keep_history",
        "two_phase": "two_phase",
        "commit_lock_timeout": "commit_lock_timeout",
        "lock_wait": "lock_wait",
        "pool_size": "pool_size",
        "cache_size_bytes": "cache_size_bytes",
    }

    def open(self) -> Storage:
        from atoll.storage.postgresql import PostgreSQLStorage

        return PostgreSQLStorage(self.section.dsn, **self.arguments())


# The <zodb> keys and the DB keyword argument each one sets.
_DB_ARGUMENTS = {
    "cache_size": "cache_size",
    "cache_size_bytes": "cache_size_bytes",
    "pool_size": "pool_size",
    "pool_timeout": "pool_timeout",
    "historical_pool_size": "historical_pool_size",
    "historical_cache_size": "historical_cache_size",
    "historical_cache_size_bytes": "historical_cache_size_bytes",
    "historical_timeout": "historical_timeout",
    "allow_implicit_cross_references": "xrefs",
}


class DatabaseFactory:
    """``<zodb NAME>``: opens an :class:`atoll.DB` on the section's storage."""

    def __init__(self, section: SectionValue) -> None:
        self.section = section  # the parsed section; read by open()
        self.name: str | None = section.getSectionName()

    @property
    def database_name(self) -> str:
        """``database-name``, else the section's name, else ``'unnamed'``."""
        return self.section.database_name or self.name or "unnamed"

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments for :class:`atoll.DB`, besides storage and databases:
        only the keys the file sets, so that DB's defaults apply to the rest."""
        kwargs = {"database_name": self.database_name, **_given(self.section, _DB_ARGUMENTS)}
        if self.section.class_aliases:
            kwargs["class_aliases"] = dict(self.section.class_aliases)
        if self.section.allowed_globals:
            kwargs["allowed_globals"] = list(self.section.allowed_globals)
        return kwargs

    def open(self, databases: dict[str, DB] | None = None) -> DB:
        """Open the storage and a DB on it, registered in ``databases`` if given.

        A name already in ``databases`` raises ValueError before the storage is
        opened; if the DB cannot be created, the storage is closed again.
        """
        from atoll.db import DB

        kwargs = self.arguments()
        if databases is not None and kwargs["database_name"] in databases:
            raise already_there(kwargs["database_name"])
        storage = self.section.storage.open()
        try:
            return DB(storage, databases=databases, **kwargs)
        except BaseException:
            storage.close()
            raise

    def __repr__(self) -> str:
        return f"<DatabaseFactory {self.database_name!r}>"


class DatabaseFactories(list):
    """The factories of a file's ``<zodb>`` sections, in file order.

    A list (``zconfig.database[0]`` is the first section's factory) that can also
    open every section at once, into one collection.
    """

    def open(self, databases: dict[str, DB] | None = None) -> DB:
        """Open every database into ``databases`` (a new dict if None) and return the
        first.

        Names are checked first: a name used twice, or already in ``databases``,
        raises ValueError with nothing opened. If opening one fails, the databases
        opened before it are closed and taken out of ``databases`` again, so the
        mapping is left as it was.
        """
        if not self:
            raise ValueError("the configuration has no <zodb> section")
        if databases is None:
            databases = {}
        seen = set(databases)
        for factory in self:
            name = factory.database_name
            if name in seen:
                raise already_there(name)
            seen.add(name)
        opened: list[DB] = []
        try:
            for factory in self:
                opened.append(factory.open(databases))
        except BaseException:
            for db in reversed(opened):
                db.close()
                if databases.get(db.database_name) is db:
                    del databases[db.database_name]
            raise
        return opened[0]


def database_schema_root(section: SectionValue) -> SectionValue:
    """ZConfig datatype of the database schema's top level: makes ``database``
    a :class:`DatabaseFactories`, so ``config.database.open(databases=d)`` works."""
    section.database = DatabaseFactories(section.database)
    return section
