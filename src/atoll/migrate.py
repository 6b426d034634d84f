"""Rewriting records after classes moved, so that class aliases can be dropped.

``DB(class_aliases={'old.module': 'new.module'})`` lets records that name old
classes load with the new ones, but every such record keeps the old name until it
is written again. :func:`rename_classes` rewrites them all, in one pass over the
objects of a database or a whole collection (each current record is read once,
the references of each followed, as pack does), replacing the names in the record's
bytes: nothing is unpickled, no application class is imported, and a record that
names no old class is not touched. Afterwards the aliases are no longer needed
(old revisions still name the old classes until a pack removes them: keep the
aliases for historical connections and undo until then).

``docs/classes.md`` walks through a rename, from broken objects to aliases to
this rewrite.

The rewrite runs in transactions of at most ``batch`` records each (the description
says ``atoll.migrate.rename_classes``); a record changed meanwhile by another
process is read again and rewritten in a later transaction.
"""

from __future__ import annotations

import pickletools
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from atoll.classes import ClassPolicy
from atoll.errors import ConflictError
from atoll.ids import ROOT_OID, oid_repr
from atoll.progress import Progress, Reporter
from atoll.serialize import references
from atoll.storage.base import TransactionMeta

if TYPE_CHECKING:
    from atoll.db import DB

__all__ = ["rename_classes", "rename_in_record", "RenameStats"]

DESCRIPTION = "atoll.migrate.rename_classes"


@dataclass
class RenameStats:
    """What :func:`rename_classes` did.

    ``read``: records read; ``rewritten``: records written with new names;
    ``names``: ``'old -> new'`` -> how many times each name was replaced;
    ``per_database``: name -> (read, rewritten); ``not_rewritten``: records that
    name an old class in a way the byte-level rewrite does not handle (a protocol 4
    name shared through the memo), as ``(database_name, oid)``, left unchanged."""

    read: int = 0
    rewritten: int = 0
    names: Counter = field(default_factory=Counter)
    per_database: dict[str, tuple[int, int]] = field(default_factory=dict)
    not_rewritten: list[tuple[str, bytes]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.read:,} records read, {self.rewritten:,} rewritten"]
        lines += [f"  {name}: {count:,}" for name, count in sorted(self.names.items())]
        if self.not_rewritten:
            shown = ", ".join(f"{db}:{oid_repr(oid)}" for db, oid in self.not_rewritten[:10])
            lines.append(f"  not rewritten (names shared through the pickle memo): {shown}")
        return "\n".join(lines)


class _Unhandled(Exception):
    """A record names an old class in a layout the byte rewrite leaves alone."""


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"}


def _string_op(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + len(data).to_bytes(4, "little") + data


def _opcodes(data: bytes) -> list[tuple[str, Any, int]]:
    """The opcodes of the pickle ``data`` starts with: (name, argument, position)."""
    found = []
    for op, arg, pos in pickletools.genops(data):
        assert pos is not None  # genops gives positions in bytes
        found.append((op.name, arg, pos))
    return found


def rename_in_record(
    data: bytes, rename: Callable[[str, str], tuple[str, str]], found: Counter | None = None
) -> bytes | None:
    """``data`` with every global ``module name`` renamed by ``rename(module, name)``,
    or None when nothing changes. Works on the bytes: GLOBAL opcodes (protocols 0
    to 3, what atoll and ZODB write) are rewritten in place (nothing refers to their
    position or length); protocol 4's STACK_GLOBAL has its two strings rewritten and
    the optional frames dropped. Raises ``_Unhandled`` for a protocol 4 name that is
    shared through the memo (rewriting it would rename its other uses too)."""
    renames: list[tuple[int, int, bytes]] = []  # (start, end, replacement)
    frames: list[tuple[int, int, bytes]] = []
    start = 0
    while start < len(data):
        strings: list[tuple[str, int, int, int | None]] = []  # (text, at, end, memo index read or None)
        memo: dict[int, tuple[str, int]] = {}  # memo index -> (text, position of its string op)
        read_back: set[int] = set()  # positions of string ops whose memo entry is read again
        stack_globals: list[list[tuple[str, int, int, int | None]]] = []
        memo_count = 0
        ops = _opcodes(data[start:])
        for index, (name, arg, pos) in enumerate(ops):
            at = start + pos
            until = start + (ops[index + 1][2] if index + 1 < len(ops) else pos + 1)
            if name == "GLOBAL":
                module, _, attribute = arg.partition(" ")
                new = rename(module, attribute)
                if new != (module, attribute):
                    renames.append((at, until, b"c" + f"{new[0]}\n{new[1]}\n".encode("utf-8")))
                    if found is not None:
                        found[f"{module}.{attribute} -> {new[0]}.{new[1]}"] += 1
            elif name in _STRING_OPS:
                strings.append((arg, at, until, None))
                continue
            elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                key = memo_count if name == "MEMOIZE" else int(arg)
                memo_count += name == "MEMOIZE"
                if strings and strings[-1][3] is None and strings[-1][2] == at:
                    memo[key] = (strings[-1][0], strings[-1][1])
                continue
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                entry = memo.get(int(arg))
                if entry is not None:
                    read_back.add(entry[1])
                    strings.append((entry[0], at, until, int(arg)))
                    continue
            elif name == "STACK_GLOBAL":
                stack_globals.append(strings[-2:])
            elif name == "FRAME":
                frames.append((at, until, b""))
                continue
            elif name == "STOP":
                start = until
                break
            strings = []
        else:
            raise ValueError("a record that does not end with a pickle STOP")
        for pair in stack_globals:
            if len(pair) != 2:
                continue
            (module, m_at, m_end, m_get), (attribute, n_at, n_end, n_get) = pair
            new = rename(module, attribute)
            if new == (module, attribute):
                continue
            if m_get is not None or n_get is not None or m_at in read_back or n_at in read_back:
                raise _Unhandled(f"{module}.{attribute}")
            if new[0] != module:
                renames.append((m_at, m_end, _string_op(new[0])))
            if new[1] != attribute:
                renames.append((n_at, n_end, _string_op(new[1])))
            if found is not None:
                found[f"{module}.{attribute} -> {new[0]}.{new[1]}"] += 1
    if not renames:
        return None
    parts = []
    last = 0
    for at, until, replacement in sorted(renames + frames):
        parts.append(data[last:at])
        parts.append(replacement)
        last = until
    parts.append(data[last:])
    return b"".join(parts)


def _databases(databases: DB | Mapping[str, DB] | Iterable[DB]) -> list[DB]:
    from atoll.db import DB

    if isinstance(databases, DB):
        return list(databases.databases.values()) if len(databases.databases) > 1 else [databases]
    if isinstance(databases, Mapping):
        return list(databases.values())
    found = list(databases)
    if not all(isinstance(db, DB) for db in found):
        raise TypeError("rename_classes takes a DB, a dict of DBs (a collection) or a list of DBs")
    return found


def rename_classes(
    databases: DB | Mapping[str, DB] | Iterable[DB],
    aliases: Mapping[str, str],
    progress: Progress | None = None,
    *,
    batch: int = 1000,
) -> RenameStats:
    """Rewrite every record of ``databases`` that names a class (or module) of
    ``aliases`` (the mapping ``class_aliases`` takes), so it names the new one.

    ``databases`` is a DB (with its whole collection), a dict of DBs or a list of
    them. Objects are found as pack finds them: from each root, following
    references, across databases. ``progress`` (e.g. ``print``) gets a line from
    time to time and a summary. Returns :class:`RenameStats`.
    """
    policy = ClassPolicy(class_aliases=aliases)  # checks the aliases
    if not aliases:
        raise ValueError("rename_classes needs at least one alias ('old.module.Name': 'new.module.Name')")
    olds = sorted({split for old in aliases for split in _old_modules(old)}, key=len, reverse=True)
    mentions = re.compile(b"|".join(re.escape(module.encode("utf-8")) for module in olds))
    dbs = _databases(databases)
    by_name = {db.database_name: db for db in dbs}
    stats = RenameStats()
    views = {name: db.storage.open_view() for name, db in by_name.items()}
    queues: dict[str, deque[bytes]] = {name: deque([ROOT_OID]) for name in by_name}
    seen: dict[str, set[bytes]] = {name: {ROOT_OID} for name in by_name}
    reporter = Reporter(progress, "renaming classes", unit="records read")
    try:
        while any(queues.values()):
            for name, queue in queues.items():
                if not queue:
                    continue
                wanted = [queue.popleft() for _ in range(min(len(queue), batch))]
                records = views[name].load_many(wanted)
                pending: dict[bytes, tuple[bytes, bytes]] = {}
                for oid, (data, serial) in records.items():
                    stats.read += 1
                    for database_name, ref in references(data):
                        target = name if database_name is None else database_name
                        if target in seen and ref not in seen[target]:
                            seen[target].add(ref)
                            queues[target].append(ref)
                    if mentions.search(data) is None:
                        continue
                    try:
                        new = rename_in_record(data, policy.alias, stats.names)
                    except _Unhandled:
                        stats.not_rewritten.append((name, oid))
                        continue
                    if new is not None:
                        pending[oid] = (serial, new)
                read, rewritten = stats.per_database.get(name, (0, 0))
                if pending:
                    _commit(views[name], pending, policy, stats.names)
                stats.rewritten += len(pending)
                stats.per_database[name] = (read + len(records), rewritten + len(pending))
                reporter.advance(len(records))
    finally:
        for view in views.values():
            view.release()
    reporter.done(f"renaming classes: {stats.read:,} records read, {stats.rewritten:,} rewritten, done")
    return stats


def _old_modules(old: str) -> list[str]:
    """The module part(s) an alias key may appear as in a record's bytes."""
    if ":" in old:
        return [old.partition(":")[0]]
    module = old.rpartition(".")[0]
    return [old, module] if module else [old]


def _commit(view, records: dict[bytes, tuple[bytes, bytes]], policy: ClassPolicy, names: Counter) -> None:
    """Store ``records`` (oid -> (read serial, new data)) in one transaction; a
    record changed meanwhile is read again (after the view moves on) and retried."""
    while records:
        view.tpc_begin(TransactionMeta(description=f"{DESCRIPTION}: {len(records)} records"))
        try:
            for oid, (serial, data) in records.items():
                view.store(oid, serial, data)
            view.tpc_vote(None)
            view.tpc_finish()
            return
        except ConflictError as exc:
            view.tpc_abort()
            changed = exc.oid
            view.poll()
            again: dict[bytes, tuple[bytes, bytes]] = {}
            for oid, (data, serial) in view.load_many(records).items():
                new = rename_in_record(data, policy.alias)
                if new is not None:
                    again[oid] = (serial, new)
            if changed is not None and again == records:
                raise  # the same conflict again: someone else's lock, not a change
            records = again
        except BaseException:
            view.tpc_abort()
            raise
