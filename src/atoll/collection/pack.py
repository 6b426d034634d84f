"""Pack a whole collection: old revisions go, and so does what no root reaches.

ZODB leaves garbage collection across databases to an external tool run between two
packs, and its storages' own GC, run per database, deletes objects that only
another database refers to. Here one call marks from every member's root, across
cross-database references (:mod:`atoll.collection.marking`), and sweeps every member,
whatever its storage; then gives the freed space back (:meth:`Storage.vacuum`).

It refuses, with one line, to pack part of a collection: every database that a
member remembers exchanging references with (:mod:`atoll.collection.membership`)
must be among the databases given, under the name the collection knows it by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, NamedTuple

from atoll.arguments import pack_time
from atoll.collection import membership
from atoll.collection.marking import pack_storages
from atoll.ids import tid_from_time
from atoll.progress import ProgressStep
from atoll.storage.base import PackStats, Progress

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["pack", "vacuum", "Space", "pack_tid", "check_complete"]


def pack_tid(t: float | None = None, days: float = 0) -> bytes:
    """The tid a pack at POSIX time ``t`` (default now) minus ``days`` keeps history
    from; bad values are refused as :meth:`DB.pack` refuses them."""
    return tid_from_time(pack_time(t, days))


def check_complete(databases: Mapping[str, DB]) -> None:
    """ValueError unless ``databases`` holds every member each of them remembers,
    each under the name the collection knows it by."""
    if not databases:
        raise ValueError("no databases to pack: pass the collection's databases dict (name -> DB)")
    for name, db in databases.items():
        known = membership.read(db.storage)
        if known.name is not None and known.name != name:
            raise ValueError(
                f"database {name!r} ({db.storage.name}) is named {known.name!r} in its collection: "
                f"open it as database_name={known.name!r}"
            )
        missing = sorted(known.others - set(databases))
        if missing:
            raise ValueError(
                f"database {name!r} is in a collection with {', '.join(map(repr, missing))}, "
                "which is not among the databases given: open every member and pack them together"
            )


def pack(
    databases: Mapping[str, DB], t: float | None = None, days: float = 0, progress: Progress | None = None
) -> dict[str, PackStats]:
    """Pack every database of a collection (``databases``: the shared name -> DB dict)
    as of time ``t`` (default now) minus ``days``: old revisions go and, in each
    database, the objects reachable from no root of the collection. Objects created
    or linked after the pack time stay, even when other processes commit meanwhile.

    ``progress`` (a callable taking one line of text) hears of marking and sweeping
    as they go. Returns what was removed, per database name.
    """
    tid = pack_tid(t, days)
    check_complete(databases)
    storages = {name: db.storage for name, db in databases.items()}
    return pack_storages(storages, tid, collect=True, progress=progress)


class Space(NamedTuple):
    """Bytes a storage took before and after :func:`vacuum`."""

    before: int
    after: int


def vacuum(databases: Mapping[str, DB], progress: Progress | None = None) -> dict[str, Space]:
    """Give the space of removed records back to the file system, in every database
    (:meth:`~atoll.storage.base.Storage.vacuum`): a pack already does it; this is for
    files packed by an earlier version, or to run it at a quiet moment."""
    result = {}
    for done, (name, db) in enumerate(databases.items(), 1):
        before = db.storage.get_size()
        result[name] = Space(before, db.storage.vacuum())
        if progress is not None:
            line = f"vacuumed {name} ({db.storage.name}): {before:,} bytes -> {result[name].after:,} bytes"
            progress(ProgressStep("vacuuming", done, len(databases), "databases", done == len(databases), line))
    return result
