"""The reading commands: info, ls, show, log, history. They open storages read-only."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import click
import transaction
from persistent import Persistent

from atoll.cli.main import cli
from atoll.cli.opening import Collection, CommandError, TargetError, open_target
from atoll.cli.output import format_value, jsonable, oid_text, print_json, table, tid_text, tid_time
from atoll.db import DB
from atoll.errors import POSKeyError
from atoll.inspection import describe_record

__all__ = ["info", "ls", "show", "log", "history"]

_TARGET = click.argument("target", metavar="TARGET")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
_DATABASE = click.option(
    "-d", "--database", metavar="NAME", help="Which database of a collection (default: the first)."
)


@contextlib.contextmanager
def reading(target: str) -> Iterator[Collection]:
    """The databases ``target`` names, opened read-only, closed afterwards."""
    opened = open_target(target, read_only=True)
    try:
        yield opened
    finally:
        opened.close()


@contextlib.contextmanager
def connection_to(db: DB) -> Iterator[Any]:
    """A connection of its own transaction manager, closed (and aborted) afterwards."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    try:
        yield conn
    finally:
        manager.abort()
        conn.close()


def _class_name(value: Any) -> str:
    klass = type(value)
    return f"{klass.__module__}.{klass.__qualname__}"


def _count_transactions(db: DB) -> tuple[int, bytes | None]:
    """How many transactions a database holds, and the first one's tid."""
    count, first = 0, None
    for record in db.storage.iterator():
        if first is None:
            first = record.tid
        count += 1
    return count, first


@cli.command()
@_TARGET
@_JSON
def info(target: str, as_json: bool) -> None:
    """Each database: storage, size on disk, objects, transactions, first and
    last commit, whether history is kept, and its collection.

    \b
    Example:
      atoll info app.db
    """
    rows: list[dict[str, Any]] = []
    with reading(target) as opened:
        for db in opened:
            storage = db.storage
            count, first = _count_transactions(db)
            last = storage.last_transaction()
            others = sorted(name for name in opened.databases if name != db.database_name)
            remembered = getattr(storage, "collection_members", None)
            if callable(remembered):
                others = sorted(set(others) | set(remembered()) - {db.database_name})
            rows.append(
                {
                    "database": db.database_name,
                    "storage": f"{type(storage).__name__} {storage.name}",
                    "size_bytes": storage.get_size(),
                    "objects": len(storage),
                    "transactions": count,
                    "first_commit": tid_time(first) if first else None,
                    "last_commit": tid_time(last) if count else None,
                    "last_tid": tid_text(last),
                    "keeps_history": bool(storage.keep_history),
                    "collection": others,
                }
            )
    if as_json:
        print_json(rows)
        return
    for n, row in enumerate(rows):
        if n:
            click.echo()
        click.echo(f"database      {row['database']}")
        click.echo(f"storage       {row['storage']}")
        click.echo(f"size          {_size(row['size_bytes'])}")
        click.echo(f"objects       {row['objects']:,}")
        click.echo(f"transactions  {row['transactions']:,}")
        click.echo(f"first commit  {row['first_commit'] or '-'}")
        click.echo(f"last commit   {row['last_commit'] or '-'} ({row['last_tid']})")
        click.echo(f"history       {'kept' if row['keeps_history'] else 'not kept (history-free)'}")
        members = ", ".join(row["collection"]) if row["collection"] else "none (a database on its own)"
        click.echo(f"collection    {members}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{size:,.1f} {unit} ({n:,} bytes)"
        size /= 1024
    return f"{n:,} bytes"


def _parse_oid(text: str) -> bytes | None:
    """``0x12`` (or 16 hex digits) as an 8-byte oid; None when ``text`` is no oid."""
    digits = text[2:] if text.lower().startswith("0x") else None
    if digits is None or not digits or len(digits) > 16:
        return None
    try:
        return int(digits, 16).to_bytes(8, "big")
    except ValueError:
        return None


def _child(obj: Any, segment: str, walked: str) -> Any:
    """``obj``'s item or attribute named ``segment`` (as a path step)."""
    getitem = getattr(obj, "__getitem__", None)
    if getitem is not None and not isinstance(obj, (str, bytes)):
        candidates: list[Any] = [segment]
        if segment.lstrip("-").isdigit():
            candidates.append(int(segment))
        for key in candidates:
            try:
                return getitem(key)
            except (KeyError, IndexError, TypeError):
                continue
    if not segment.startswith("_"):
        try:
            return getattr(obj, segment)
        except AttributeError:
            pass
    raise CommandError(f"no {segment!r} in {walked or 'the root'}: `atoll ls` shows what is there")


def _resolve(conn: Any, path: str) -> Any:
    """The object at ``path`` (``people/ada``), from the root; ``''`` is the root."""
    obj: Any = conn.root()
    walked = ""
    for segment in (s for s in path.split("/") if s):
        obj = _child(obj, segment, walked)
        walked = f"{walked}/{segment}" if walked else segment
    return obj


def _entries(obj: Any) -> list[tuple[Any, Any]]:
    """What ``ls`` lists of an object: its items, or else its attributes."""
    items = getattr(obj, "items", None)
    if callable(items) and not isinstance(obj, type):
        try:
            return list(items())
        except TypeError:
            pass
    if isinstance(obj, Persistent):
        obj._p_activate()
        state = obj.__getstate__()
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            return sorted((k, v) for k, v in state.items() if not k.startswith("_p_"))
        return []
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    attrs = getattr(obj, "__dict__", None)
    return sorted(attrs.items()) if isinstance(attrs, dict) else []


def _describe_value(value: Any, home: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"class": _class_name(value)}
    oid = getattr(value, "_p_oid", None) if isinstance(value, Persistent) else None
    if oid is not None:
        entry["oid"] = oid_text(oid)
        jar = value._p_jar
        if jar is not None and jar.db().database_name != home:
            entry["database"] = jar.db().database_name
    else:
        text = repr(value)
        entry["value"] = text if len(text) <= 60 else text[:57] + "..."
    return entry


@cli.command()
@_TARGET
@click.argument("path", default="", required=False)
@_DATABASE
@click.option("-n", "--limit", default=200, show_default=True, help="List at most this many entries.")
@_JSON
def ls(target: str, path: str, database: str | None, limit: int, as_json: bool) -> None:
    """The root's keys, or the items or attributes of the object at PATH
    (keys and attribute names joined by '/'). Objects show their class and oid.

    \b
    Examples:
      atoll ls app.db
      atoll ls app.db people/ada
    """
    with reading(target) as opened:
        db = opened.pick(database)
        with connection_to(db) as conn:
            obj = _resolve(conn, path)
            entries = _entries(obj)
            listed = [(k, _describe_value(v, db.database_name)) for k, v in entries[:limit]]
    more = len(entries) - len(listed)
    if as_json:
        print_json({"path": path, "entries": [{"key": jsonable(k), **d} for k, d in listed], "more": more})
        return
    rows = []
    for key, d in listed:
        where = f"{d['database']}:" if "database" in d else ""
        rows.append((key if isinstance(key, str) else repr(key), d["class"], f"{where}{d['oid']}" if "oid" in d else d["value"]))
    if rows:
        table(rows, ["key", "class", "oid or value"])
    else:
        click.echo("(nothing)")
    if more > 0:
        click.echo(f"... and {more:,} more (use --limit)")


def _locate(opened: Collection, database: str | None, where: str) -> tuple[DB, bytes]:
    """The database and oid of ``where``: an oid (``0x..``, ``NAME:0x..``) or a path."""
    name, sep, rest = where.partition(":")
    if sep and _parse_oid(rest) is not None:
        database, where = name, rest
    db = opened.pick(database)
    oid = _parse_oid(where)
    if oid is not None:
        return db, oid
    with connection_to(db) as conn:
        obj = _resolve(conn, where)
        if not isinstance(obj, Persistent) or obj._p_oid is None:
            raise CommandError(
                f"{where!r} is a {_class_name(obj)} stored inside its parent, not an object of its own: "
                f"`atoll ls` its parent to see it"
            )
        return obj._p_jar.db(), obj._p_oid


@cli.command()
@_TARGET
@click.argument("where", metavar="OID|PATH", default="0x0", required=False)
@_DATABASE
@_JSON
def show(target: str, where: str, database: str | None, as_json: bool) -> None:
    """One object: class, state (references shown as links with their database),
    size and number of revisions. Read without the application's classes.

    \b
    Examples:
      atoll show app.db people/ada
      atoll show app.db 0x2a
      atoll show app.conf orders:0x2a
    """
    with reading(target) as opened:
        db, oid = _locate(opened, database, where)
        view = db.storage.open_view()
        try:
            try:
                data, serial = view.load(oid)
            except POSKeyError:
                raise CommandError(f"no object {oid_text(oid)} in database {db.database_name!r}") from None
        finally:
            view.release()
        revisions = len(db.storage.history(oid, size=1000)) if db.storage.keep_history else 1
        record = describe_record(data)
    out = {
        "database": db.database_name,
        "oid": oid_text(oid),
        "class": record.class_name,
        "serial": tid_text(serial),
        "committed": tid_time(serial),
        "size": len(data),
        "revisions": revisions,
        "references": [jsonable(r) for r in record.references],
        "state": jsonable(record.state),
    }
    if as_json:
        print_json(out)
        return
    click.echo(f"oid        {out['oid']} in {db.database_name}")
    click.echo(f"class      {record.class_name}")
    click.echo(f"serial     {out['serial']} ({out['committed']})")
    click.echo(f"size       {len(data):,} bytes")
    click.echo(f"revisions  {revisions}{'+' if revisions >= 1000 else ''}")
    click.echo(f"state      {format_value(record.state, indent=11)}")


@cli.command()
@_TARGET
@click.option("-n", "--count", default=20, show_default=True, help="How many transactions, newest first.")
@_JSON
def log(target: str, count: int, as_json: bool) -> None:
    """The newest transactions: time, id, user, description, bytes written and
    databases (a transaction of several databases of a collection is one row;
    its id undoes it in all of them with `atoll undo`).

    \b
    Example:
      atoll log app.db -n 5
    """
    from atoll.collection.undo import undo_log
    from atoll.undo import parse_undo_id

    if count < 0:
        raise TargetError("--count must be 0 or more")
    with reading(target) as opened:
        entries = undo_log(opened.databases, 0, -count) if count else []
    rows = []
    for entry in entries:
        _, tid = parse_undo_id(entry["id"])
        rows.append({
            "id": entry["id"].decode() if isinstance(entry["id"], bytes) else str(entry["id"]),
            "tid": tid_text(tid),
            "time": tid_time(tid),
            "user": entry["user_name"],
            "description": entry["description"],
            "size": entry["size"],
            "databases": list(entry["databases"]),
        })
    if as_json:
        print_json(rows)
        return
    table(
        [(r["time"], r["id"], r["user"] or "-", r["description"] or "-", f"{r['size']:,}", ",".join(r["databases"]))
         for r in rows],
        ["time", "id (for atoll undo)", "user", "description", "bytes", "databases"],
    )


@cli.command()
@_TARGET
@click.argument("where", metavar="OID|PATH")
@_DATABASE
@click.option("-n", "--count", default=20, show_default=True, help="How many revisions, newest first.")
@_JSON
def history(target: str, where: str, database: str | None, count: int, as_json: bool) -> None:
    """The revisions of one object, newest first: tid, time, user, description, size.

    \b
    Examples:
      atoll history app.db people/ada
      atoll history app.db 0x2a -n 5
    """
    if count < 1:
        raise TargetError("--count must be 1 or more")
    with reading(target) as opened:
        db, oid = _locate(opened, database, where)
        try:
            entries = db.history(oid, size=count)
        except POSKeyError:
            raise CommandError(f"no object {oid_text(oid)} in database {db.database_name!r}") from None
    rows = [
        {"tid": tid_text(e["tid"]), "time": tid_time(e["tid"]), "user": e["user_name"],
         "description": e["description"], "size": e["size"]}
        for e in entries
    ]
    if as_json:
        print_json({"database": db.database_name, "oid": oid_text(oid), "revisions": rows})
        return
    table([(r["time"], r["tid"], r["user"] or "-", r["description"] or "-", f"{r['size']:,}") for r in rows],
          ["time", "tid", "user", "description", "bytes"])

