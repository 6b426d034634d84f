"""Undo across the databases of a collection: the undo log and the undo itself.

A transaction that committed in several databases of a collection is one decision,
so atoll undoes it as one: in every database it touched, in one commit (the normal
multi-database commit, with its crash safety). Its partners are found by the key
each storage records for a commit (:func:`~atoll.storage.base.commit_key`, equal in
every participant): first among the transactions committed within an hour of it
(partners' tids are allocated within moments of each other), then, for the undo
itself, in the whole log of each database where it was not found there.

The undo log of one database shows each of its transactions once, with the
databases it touched (``databases``); :func:`undo_log` shows the whole
collection's, each multi-database transaction once.

ZODB's entry points are the ``DB`` methods ``undoLog``, ``undoInfo``, ``undo`` and
``undoMultiple``, which call :func:`database_undo_log` and :func:`undo_multiple`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import transaction

from atoll.errors import UndoError
from atoll.ids import next_tid, tid_from_time, tid_repr, tid_time
from atoll.storage.base import TransactionInfo
from atoll.undo import UndoPart, check_undoable, parse_undo_id, undo_id, undo_records

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["undo_log", "database_undo_log", "undo_multiple", "partners"]

#: Seconds either side of a transaction within which its partners are looked for first.
PARTNER_WINDOW = 3600.0
#: Transactions read from a storage per page of the log.
_PAGE = 100

Filter = Callable[[dict], bool]


def _entries(db: DB, first_page: int = _PAGE) -> Iterator[tuple[TransactionInfo, dict]]:
    """Every transaction of ``db``, newest first, with its log entry; the first page
    read is of ``first_page`` transactions (what an unfiltered log needs)."""
    before, size = None, max(1, min(first_page, _PAGE))
    while True:
        page = db.storage.transaction_log(before, size)
        for info in page:
            entry = dict(info.extension)
            entry.update(
                id=undo_id(db.database_name, info.tid),
                time=tid_time(info.tid),
                user_name=info.user,
                description=info.description,
                size=info.size,
                database=db.database_name,
                databases=(db.database_name,),
            )
            yield info, entry
        if len(page) < size:
            return
        before, size = page[-1].tid, _PAGE


def _bounds(first: int, last: int) -> tuple[int, int]:
    """ZODB's (first, last): a negative ``last`` means ``first - last`` entries."""
    if last < 0:
        last = first - last
    return first, last


def _window(tids: Iterable[bytes]) -> tuple[bytes, bytes]:
    tids = list(tids)
    return (
        tid_from_time(max(0.0, tid_time(min(tids)) - PARTNER_WINDOW)),
        tid_from_time(tid_time(max(tids)) + PARTNER_WINDOW),
    )


def _annotate(db: DB, chosen: list[tuple[TransactionInfo, dict]]) -> None:
    """Set each entry's ``databases``: the members where its commit is found too."""
    databases = db.databases
    keyed = [(info, entry) for info, entry in chosen if info.key]
    if len(databases) < 2 or not keyed:
        return
    low, high = _window(info.tid for info, _ in keyed)
    keys = [info.key for info, _ in keyed]
    found: dict[str, list[str]] = {}
    for name, member in databases.items():
        if member is db or member._closed:
            continue
        for key in member.storage.find_transactions(keys, low, high):
            found.setdefault(key, []).append(name)
    for info, entry in keyed:
        if info.key in found:
            entry["databases"] = tuple(sorted((db.database_name, *found[info.key])))


def database_undo_log(db: DB, first: int = 0, last: int = -20, filter: Filter | None = None) -> list[dict]:
    """``db.undoLog``: entries ``first`` to ``last`` of the ones ``filter`` accepts,
    newest first (see the module docstring for ``databases``)."""
    first, last = _bounds(first, last)
    chosen: list[tuple[TransactionInfo, dict]] = []
    index = 0
    if last > first:
        for info, entry in _entries(db, last if filter is None else _PAGE):
            if filter is not None and not filter(entry):
                continue
            if index >= first:
                chosen.append((info, entry))
            index += 1
            if index >= last:
                break
    _annotate(db, chosen)
    return [entry for _, entry in chosen]


def undo_log(
    databases: Mapping[str, DB], first: int = 0, last: int = -20, filter: Filter | None = None
) -> list[dict]:
    """The undo log of a whole collection, newest first: each transaction once, with
    the databases it touched (a multi-database transaction is listed under the first
    of them by name; its ``id`` undoes it everywhere)."""
    first, last = _bounds(first, last)
    streams = {name: _entries(db) for name, db in sorted(databases.items()) if not db._closed}
    heads: dict[str, tuple[TransactionInfo, dict]] = {}
    for name, stream in streams.items():
        head = next(stream, None)
        if head is not None:
            heads[name] = head
    seen: set[str] = set()
    chosen: list[dict] = []
    index = 0
    while heads and index < last:
        name = max(heads, key=lambda n: (tid_time(heads[n][0].tid), n))
        info, entry = heads[name]
        following = next(streams[name], None)
        if following is None:
            del heads[name]
        else:
            heads[name] = following
        if info.key and info.key in seen:
            continue
        if info.key:
            seen.add(info.key)
        if filter is not None and not filter(entry):
            continue
        if index >= first:
            owner = databases[name]
            _annotate(owner, [(info, entry)])
            chosen.append(entry)
        index += 1
    return chosen


def partners(db: DB, tid: bytes) -> dict[str, bytes]:
    """Database name -> tid of every member of ``db``'s collection in which the
    transaction ``tid`` of ``db`` committed (``db`` itself included)."""
    name = db.database_name
    page = db.storage.transaction_log(next_tid(tid), 1)
    if not page or page[0].tid != tid:
        raise UndoError(
            f"database {name!r} has no transaction {tid_repr(tid)}: it was packed away, "
            "or the id is from another collection"
        )
    key = page[0].key
    found = {name: tid}
    if not key:
        return found
    low, high = _window([tid])
    for other_name, other in db.databases.items():
        if other is db:
            continue
        hit = other.storage.find_transactions([key], low, high) or other.storage.find_transactions([key])
        if key in hit:
            found[other_name] = hit[key]
    return found


def undo_multiple(db: DB, ids: Iterable[bytes | str], txn: Any = None) -> None:
    """``db.undoMultiple``: join ``txn`` (default: the current transaction) with the
    undo of each transaction, in every database it committed in.

    Everything is checked before anything joins the transaction: an error (UndoError,
    ReadOnlyError) leaves the transaction as it was."""
    if txn is None:
        txn = transaction.get()
    targets: dict[str, set[bytes]] = {}
    for id in ids:
        name, tid = parse_undo_id(id)
        source = db if name is None else db.databases.get(name)
        if source is None:
            raise UndoError(f"undo id {id!r} is from database {name!r}, which is not in the collection of {db.database_name!r}")
        for member_name, member_tid in partners(source, tid).items():
            targets.setdefault(member_name, set()).add(member_tid)
    plans = {}
    for name, tids in sorted(targets.items()):
        member = db.databases[name]
        check_undoable(member.storage, name)
        plans[name] = [(tid, undo_records(member.storage, name, tid)) for tid in sorted(tids)]
    staged = []
    for name, member_plans in plans.items():
        member = db.databases[name]
        trial = UndoPart(member, txn)  # combining may still fail: nothing joins before all pass
        existing = UndoPart.existing(member, txn)
        if existing is not None:
            trial._records = dict(existing._records)
        for tid, plan in member_plans:
            trial.add(tid, plan)
        staged.append((member, trial, [tid for tid, _ in member_plans]))
    for member, trial, undone in staged:
        part = UndoPart.for_transaction(member, txn)
        part._records = trial._records
        part.undone.extend(undone)
