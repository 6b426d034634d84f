"""Opening databases and storages from ZConfig configuration files.

The format is ZODB's for the sections both have (see ``docs/configuration.md``)::

    <zodb main>
      <sqlitestorage>
        path /var/lib/app/main.db
      </sqlitestorage>
      cache-size 5000
    </zodb>

The schema and section types ship in this package (``schema.xml``, ``storage.xml``,
``component.xml``); ZConfig parses and checks the whole file, reporting mistakes with
their line numbers, before anything is opened, so a bad file creates nothing.
"""

from __future__ import annotations

import functools
import io
import os
from importlib import resources
from typing import IO, TYPE_CHECKING, Union

import ZConfig
from ZConfig.info import SchemaType

from atoll.config.factories import DatabaseFactories, DatabaseFactory, StorageFactory

if TYPE_CHECKING:
    from atoll.db import DB
    from atoll.storage.base import Storage

__all__ = [
    "getDbSchema",
    "getStorageSchema",
    "databaseFromString",
    "databaseFromFile",
    "databaseFromURL",
    "storageFromString",
    "storageFromFile",
    "storageFromURL",
    "ConfigError",
    "DatabaseFactories",
    "DatabaseFactory",
    "StorageFactory",
]

#: What the ``*FromFile`` functions accept: an open text file, or a path to one.
FileOrPath = Union[IO[str], str, "os.PathLike[str]"]


def _load_schema(filename: str) -> SchemaType:
    with resources.files(__name__).joinpath(filename).open("r", encoding="utf-8") as f:
        return ZConfig.loadSchemaFile(f)


@functools.cache
def getDbSchema() -> SchemaType:
    """The ZConfig schema of database files: ``<zodb>`` sections, one or more.

    ``ZConfig.loadConfigFile(getDbSchema(), f)`` returns ``(config, handlers)``;
    ``config.database`` is the list of database factories (a
    :class:`DatabaseFactories`), whose ``open(databases=d)`` opens them all.
    """
    return _load_schema("schema.xml")


@functools.cache
def getStorageSchema() -> SchemaType:
    """The ZConfig schema of storage files: a single storage section."""
    return _load_schema("storage.xml")


class ConfigError(ZConfig.ConfigurationSyntaxError):
    """A mistake in a configuration file, with its line, on one line.

    ZConfig knows the line of every mistake it finds while reading, but leaves it
    out of some messages (an unknown key) and puts it on a second line in others;
    this is the same error, always as ``message (line N of FILE)``.
    """

    def __str__(self) -> str:
        where = f"line {self.lineno}"
        if self.url:
            path = self.url.removeprefix("file://")
            where += f" of {path}"
        return f"{self.message} ({where})"


def _load(schema: SchemaType, source: FileOrPath, *, url: bool = False) -> object:
    """Parse ``source`` (a file object, a path, or with ``url`` a URL) against
    ``schema``; raises ZConfig.ConfigurationError naming the line of a mistake."""
    try:
        if isinstance(source, (str, os.PathLike)):
            location = os.fspath(source)
            if not url:
                # ZConfig takes a bare path as a URL; an absolute path keeps the
                # file name in its messages and %include relative to the file.
                location = os.path.abspath(location)
            config, _handlers = ZConfig.loadConfig(schema, location)
        else:
            config, _handlers = ZConfig.loadConfigFile(schema, source)
    except ZConfig.DataConversionError:
        raise  # already one line with the line number, and also a ValueError
    except ZConfig.ConfigurationError as e:
        lineno = getattr(e, "lineno", None)
        if not lineno or lineno < 0:
            raise  # about the whole file (missing, no <zodb> section): no line
        raise ConfigError(e.message, e.url, lineno) from None
    return config


def _open_databases(config: object) -> DB:
    factories: DatabaseFactories = config.database  # type: ignore[attr-defined]
    return factories.open()


def databaseFromString(text: str) -> DB:
    """Open every ``<zodb>`` section of ``text`` into one collection; return the first.

    All the databases share one ``databases`` dict, so the others are reached with
    ``db.databases[name]`` or ``conn.get_connection(name)``.
    """
    return _open_databases(_load(getDbSchema(), io.StringIO(text)))


def databaseFromFile(file: FileOrPath) -> DB:
    """Like :func:`databaseFromString`, reading an open file or the file at a path."""
    return _open_databases(_load(getDbSchema(), file))


def databaseFromURL(url: str) -> DB:
    """Like :func:`databaseFromString`, reading a URL (``file:``, ``http:``...) or path."""
    return _open_databases(_load(getDbSchema(), url, url=True))


def _open_storage(config: object) -> Storage:
    factory: StorageFactory = config.storage  # type: ignore[attr-defined]
    return factory.open()


def storageFromString(text: str) -> Storage:
    """Open the storage described by ``text``, a single storage section such as
    ``<sqlitestorage> path /tmp/x.db </sqlitestorage>``."""
    return _open_storage(_load(getStorageSchema(), io.StringIO(text)))


def storageFromFile(file: FileOrPath) -> Storage:
    """Like :func:`storageFromString`, reading an open file or the file at a path."""
    return _open_storage(_load(getStorageSchema(), file))


def storageFromURL(url: str) -> Storage:
    """Like :func:`storageFromString`, reading a URL or path."""
    return _open_storage(_load(getStorageSchema(), url, url=True))
