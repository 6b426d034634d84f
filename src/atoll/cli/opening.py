"""What a command's TARGET names: one database, or a collection from a config file.

Every command takes a path (an SQLite file), a URI (``sqlite:///...``,
``postgresql://...``, ``memory://``) or a ``.conf`` file; a config file with several
``<zodb>`` sections is a collection and commands cover all of it. Reading commands
open storages read-only, so they never write, not even a root object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import click

from atoll.db import DB

__all__ = ["Collection", "open_target", "CommandError", "TargetError"]


class CommandError(click.ClickException):
    """A failure worth one line and exit status 1 (an object that is not there)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        """Print the one-line error to stderr (or ``file``)."""
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
        """The first database of the target (the one a config file names first)."""
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
        """Close every database of the target."""
        for db in self.databases.values():
            db.close()


def open_target(target: str, *, read_only: bool, must_exist: bool = True) -> Collection:
    """Open every database ``target`` names; read-only ones when ``read_only``."""
    from atoll.collection.targets import TargetError as LibraryTargetError
    from atoll.collection.targets import open_databases

    try:
        databases = open_databases(target, read_only=read_only, must_exist=must_exist)
    except LibraryTargetError as e:
        raise TargetError(str(e)) from None
    except ValueError as e:
        if "URI" in str(e):  # a bad URI, named as the user wrote it
            raise TargetError(" ".join(str(e).replace("?read_only=true", "").replace("&read_only=true", "").split())) from None
        raise
    return Collection(databases, target)
