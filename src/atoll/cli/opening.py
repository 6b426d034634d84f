"""What a command's TARGET names: one database, or a collection from a config file.

Every command takes a path (an SQLite file), a URI (``sqlite:///...``,
``postgresql://...``, ``memory://``) or a ``.conf`` file; a config file with several
``<zodb>`` sections is a collection and commands cover all of it. Reading commands
open storages read-only, so they never write, not even a root object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click

from atoll.db import DB

__all__ = ["Collection", "open_target", "CommandError", "TargetError"]


class CommandError(click.ClickException):
    """A failure worth one line and exit status 1 (an object that is not there)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"atoll: error: {self.format_message()}", err=True, file=file)


class TargetError(CommandError):
    """A target or argument that names nothing usable: one line, exit status 2."""

    exit_code = 2


@dataclass
class Collection:
    """The databases a target opened, by name, in the order the target gives them."""

    databases: dict[str, DB]
    target: str

    @property
    def first(self) -> DB:
        return next(iter(self.databases.values()))

    def pick(self, name: str | None) -> DB:
        """The database ``name`` (the first when None); a one-line error otherwise."""
        if name is None:
            return self.first
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(self.databases)
            raise TargetError(f"no database {name!r} in {self.target} (it has: {known})") from None

    def __iter__(self) -> Iterator[DB]:
        return iter(self.databases.values())

    def __len__(self) -> int:
        return len(self.databases)

    def close(self) -> None:
        for db in self.databases.values():
            db.close()


def _is_config(target: str) -> bool:
    return target.endswith((".conf", ".cfg", ".zconfig"))


def open_target(target: str, *, read_only: bool, must_exist: bool = True) -> Collection:
    """Open every database ``target`` names; read-only ones when ``read_only``."""
    from atoll.storage.targets import is_uri

    if "\x00" in target:
        raise TargetError("a target cannot contain a NUL byte")
    if is_uri(target):
        databases: dict[str, DB] = {}
        uri = _uri(target, read_only)
        try:
            DB(uri, database_name="main", databases=databases)
        except ValueError as e:  # a bad URI: name it as the user wrote it
            raise TargetError(str(e).replace(uri, target)) from None
        return Collection(databases, target)
    if _is_config(target):
        if not os.path.isfile(target):
            raise TargetError(f"no config file at {target}: give the path of an existing .conf file")
        return Collection(_open_config(target, read_only), target)
    if must_exist and not os.path.exists(target):
        raise TargetError(
            f"no database at {target}: give the path of an existing atoll file, a URI, or a .conf file"
        )
    if os.path.isdir(target):
        raise TargetError(f"{target} is a folder: give the path of an atoll database file inside it")
    from atoll.storage.sqlite import SQLiteStorage

    databases = {}
    DB(SQLiteStorage(target, read_only=read_only), database_name="main", databases=databases)
    return Collection(databases, target)


def _uri(uri: str, read_only: bool) -> str:
    """``uri`` with ``read_only=true`` added where the scheme supports it."""
    parts = urlsplit(uri)
    if not read_only or parts.scheme.lower() == "memory":
        return uri
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "read_only"]
    query.append(("read_only", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _open_config(path: str, read_only: bool) -> dict[str, DB]:
    from atoll.config import _load, getDbSchema

    factories = _load(getDbSchema(), path).database  # type: ignore[attr-defined]
    if read_only:
        for factory in factories:
            storage_section = factory.section.storage.section
            if hasattr(storage_section, "read_only"):
                storage_section.read_only = True
    databases: dict[str, DB] = {}
    factories.open(databases)
    return databases
