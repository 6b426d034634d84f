"""Which databases form a collection, as each member remembers it.

A database opened on its own (``atoll.open("users.db")``) cannot see the databases
that refer to its objects, so a pack of it alone must not remove objects that look
unreachable. To know, each storage keeps in its metadata
(:meth:`~atoll.storage.base.Storage.set_metadata`) the name the collection gives it
and one key per other member it has exchanged references with. Both ends are written
the first time a commit holds a cross-database reference between them, before that
commit is voted, so no reference is ever durable while either end could believe it
stands alone.

Keys: ``collection.name`` (this database's name in its collection) and
``collection.member.NAME`` for each other member (the value is informative: when it
was first recorded). One key per member, not one list, so two processes recording
different members at once cannot lose either.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from atoll.errors import ReadOnlyError
from atoll.storage.base import Storage

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["Membership", "read", "record", "NAME_KEY", "MEMBER_PREFIX"]

#: The metadata key of this database's name in its collection.
NAME_KEY = "collection.name"
#: The metadata key of each other member, followed by its name.
MEMBER_PREFIX = "collection.member."


@dataclass(frozen=True)
class Membership:
    """What a storage remembers: its name in the collection (None if never part of
    one) and the names of the other members it has exchanged references with."""

    name: str | None
    others: frozenset[str]

    @property
    def is_member(self) -> bool:
        """Whether the storage has exchanged references with another database."""
        return bool(self.others)


def read(storage: Storage) -> Membership:
    """The membership recorded in ``storage``."""
    metadata = storage.get_metadata()
    others = frozenset(key[len(MEMBER_PREFIX) :] for key in metadata if key.startswith(MEMBER_PREFIX))
    return Membership(metadata.get(NAME_KEY), others)


def _write(storage: Storage, name: str, others: Iterable[str], known: Membership) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if known.name != name:
        storage.set_metadata(NAME_KEY, name)
    for other in others:
        if other not in known.others and other != name:
            storage.set_metadata(MEMBER_PREFIX + other, now)


def record(db: DB, others: Iterable[str]) -> None:
    """Remember that ``db`` and each database named in ``others`` (of
    ``db.databases``) are members of one collection, in every one of their storages."""
    others = set(others) - {db.database_name}
    _write(db.storage, db.database_name, others, read(db.storage))
    for other in others:
        partner = db.databases[other]
        try:
            _write(partner.storage, other, [db.database_name], read(partner.storage))
        except ReadOnlyError:
            pass  # a read-only database is never packed: it cannot lose anything
