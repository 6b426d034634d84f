"""The operating commands: each one call of the library, with a progress bar.

They open what they operate on themselves (the library call takes the target), and
show long work as a bar on a terminal or as plain lines otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import click

from atoll.cli.main import cli
from atoll.cli.opening import open_target
from atoll.cli.output import ProgressBar, print_json

__all__ = ["backup", "check", "copy", "export", "import_", "pack", "rename_classes", "undo", "vacuum"]


@contextlib.contextmanager
def _operating(target: str, *, read_only: bool) -> Iterator[tuple[Any, Callable[[str], None]]]:
    """The databases ``target`` names and a progress bar, both closed afterwards."""
    opened = open_target(target, read_only=read_only)
    bar = ProgressBar()
    try:
        yield opened, bar
    finally:
        bar.close()
        opened.close()


@cli.command()
@click.argument("source", metavar="SOURCE")
@click.argument("destination", metavar="DESTINATION")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def backup(source: str, destination: str, as_json: bool) -> None:
    """Back up a live SQLite database into a new file (a collection: into a new
    folder, with a config file that opens the copies as a collection), while
    writers go on. PostgreSQL: use pg_dump (see docs/operations.md).

    \b
    Examples:
      atoll backup app.db /backups/app-2026-11-30.db
      atoll backup app.conf /backups/2026-11-30/
    """
    from atoll.collection.backup import backup as backup_collection
    from atoll.collection.targets import TargetError as LibraryTargetError

    from atoll.cli.opening import TargetError

    bar = ProgressBar()
    try:
        stats = backup_collection(source, destination, progress=bar)
    except LibraryTargetError as e:
        raise TargetError(str(e)) from None
    finally:
        bar.close()
    if as_json:
        print_json({"files": stats.files, "bytes": stats.size, "config": stats.config, "seconds": stats.seconds})
        return
    for name, path in stats.files.items():
        click.echo(f"{name}: {path}")
    if stats.config:
        click.echo(f"open the backup with: atoll info {stats.config}")
    click.echo(f"{stats.size:,} bytes in {stats.seconds:.1f} s")


@cli.command()
@click.argument("target", metavar="TARGET")
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
@click.option("-m", "--message", default=None, help="Description of the undo transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print what was undone as JSON.")
def undo(target: str, ids: tuple[str, ...], message: str | None, as_json: bool) -> None:
    """Undo transactions by the ids `atoll log` shows, in one new transaction; a
    transaction of several databases of a collection is undone in all of them.
    Fails, changing nothing, when a later transaction changed the same objects.

    \b
    Examples:
      atoll log app.db -n 5
      atoll undo app.db 040d5f3d3d7e2933@main
    """
    import transaction

    opened = open_target(target, read_only=False)
    try:
        manager = transaction.TransactionManager()
        txn = manager.begin()
        opened.first.undoMultiple(list(ids), txn)
        txn.note(message or f"undo {', '.join(ids)}")
        txn.setUser("atoll undo")
        manager.commit()
        tid = {name: db.lastTransaction().hex() for name, db in opened.databases.items()}
    finally:
        opened.close()
    if as_json:
        print_json({"undone": list(ids), "last_tid": tid})
        return
    click.echo(f"undone {len(ids)} transaction{'s' if len(ids) != 1 else ''}: {', '.join(ids)}")


@cli.command()
@click.argument("source", metavar="SOURCE")
@click.argument("destination", metavar="DESTINATION")
@click.option("--json", "as_json", is_flag=True, help="Print what was copied as JSON.")
def copy(source: str, destination: str, as_json: bool) -> None:
    """Copy every transaction (tids, metadata, every revision) into an empty
    database: any storage to any storage; a path ending in .fs is a ZODB
    FileStorage (needs atoll[zodb]); two .conf files copy a collection. Run it
    again to finish a copy that was interrupted.

    \b
    Examples:
      atoll copy Data.fs app.db
      atoll copy app.db postgresql://app@db.example.com/app
      atoll copy zodb.conf atoll.conf
    """
    from atoll.collection.copy import copy as copy_transactions
    from atoll.collection.targets import TargetError as LibraryTargetError

    from atoll.cli.opening import TargetError

    bar = ProgressBar()
    try:
        result = copy_transactions(source, destination, progress=bar)
    except LibraryTargetError as e:
        raise TargetError(str(e)) from None
    finally:
        bar.close()
    results = result if isinstance(result, dict) else {"main": result}
    if as_json:
        print_json({
            name: {"transactions": s.transactions, "records": s.records, "bytes": s.size, "seconds": s.seconds,
                   "resumed_after": s.resumed_after.hex() if s.resumed_after else None}
            for name, s in results.items()
        })
        return
    for name, stats in results.items():
        resumed = f", continuing after {stats.resumed_after.hex()}" if stats.resumed_after else ""
        click.echo(
            f"{name}: {stats.transactions:,} transactions, {stats.records:,} revisions, "
            f"{stats.size:,} bytes in {stats.seconds:.1f} s{resumed}"
        )
@cli.command("rename-classes")
@click.argument("target", metavar="TARGET")
@click.argument("aliases", metavar="OLD=NEW...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print what was rewritten as JSON.")
def rename_classes(target: str, aliases: tuple[str, ...], as_json: bool) -> None:
    """Rewrite every record that names an old class or module so it names the new
    one, in every database of the target, without importing application code.
    Afterwards the class_aliases for these names can be dropped.

    \b
    Examples:
      atoll rename-classes app.db teamwiki.models.Page=teamwiki.core.Page
      atoll rename-classes app.conf teamwiki.models=teamwiki.core
    """
    from atoll.migrate import rename_classes as rename

    from atoll.cli.opening import TargetError

    mapping: dict[str, str] = {}
    for alias in aliases:
        old, sep, new = alias.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise TargetError(f"{alias!r} is not OLD=NEW (e.g. teamwiki.models.Page=teamwiki.core.Page)")
        mapping[old.strip()] = new.strip()
    with _operating(target, read_only=False) as (opened, bar):
        stats = rename(opened.databases, mapping, progress=bar)
    if as_json:
        print_json({
            "read": stats.read,
            "rewritten": stats.rewritten,
            "names": dict(stats.names),
            "not_rewritten": [f"{db}:0x{oid.hex()}" for db, oid in stats.not_rewritten],
        })
        return
    click.echo(str(stats))


@cli.command()
@click.argument("target", metavar="TARGET")
@click.option("--days", type=float, default=0, show_default=True, help="Keep history younger than this many days.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def pack(target: str, days: float, as_json: bool) -> None:
    """Remove old revisions and, in every database of the target, the objects no
    root of the collection reaches (following references across databases).
    Writers may go on meanwhile; space goes back to the file system.

    \b
    Examples:
      atoll pack app.db
      atoll pack app.conf --days 7
    """
    from atoll.collection.pack import pack as pack_collection

    from atoll.cli.opening import TargetError

    if days < 0:
        raise TargetError("--days must be 0 or more")
    with _operating(target, read_only=False) as (opened, bar):
        stats = pack_collection(opened.databases, days=days, progress=bar)
    if as_json:
        print_json({name: vars(s) for name, s in stats.items()})
        return
    for name, s in stats.items():
        click.echo(
            f"{name}: removed {s.objects_removed:,} objects, {s.revisions_removed:,} revisions, "
            f"{s.transactions_removed:,} transactions; {s.size_before:,} -> {s.size_after:,} bytes"
        )


@cli.command()
@click.argument("target", metavar="TARGET")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def check(target: str, as_json: bool) -> None:
    """Check every database of the target: dangling references (within and across
    databases), unreadable or damaged records, classes that cannot be imported,
    each with the path from a root. Reads only. Exit status 1 when it finds any.

    \b
    Examples:
      atoll check app.db
      atoll check app.conf --json
    """
    from atoll.collection.check import check as check_collection

    with _operating(target, read_only=True) as (opened, bar):
        report = check_collection(opened.databases, progress=bar)
    if as_json:
        print_json({
            "ok": report.ok,
            "problems": [
                {"database": p.database, "oid": "0x" + p.oid.hex(), "kind": p.kind, "detail": p.detail,
                 "path": [f"{db}:0x{oid.hex()}" for db, oid in p.path]}
                for p in report.problems
            ],
        })
    else:
        for problem in report.problems:
            click.echo(str(problem))
        count = len(report.problems)
        click.echo("no problems found" if report.ok else f"{count} problem{'s' if count != 1 else ''} found")
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@click.argument("target", metavar="TARGET")
@click.option("--json", "as_json", is_flag=True, help="Print the sizes as JSON.")
def vacuum(target: str, as_json: bool) -> None:
    """Give the space of removed records back to the file system in every database
    of the target (a pack does it already; this is for files packed by an earlier
    version, or to run at a quiet moment). PostgreSQL: runs VACUUM.

    \b
    Example:
      atoll vacuum app.db
    """
    from atoll.collection.pack import vacuum as vacuum_collection

    with _operating(target, read_only=False) as (opened, bar):
        sizes = vacuum_collection(opened.databases, progress=bar)
    if as_json:
        print_json({name: {"before": s.before, "after": s.after} for name, s in sizes.items()})
        return
    for name, s in sizes.items():
        click.echo(f"{name}: {s.before:,} -> {s.after:,} bytes")


@cli.command()
@click.argument("source", metavar="SOURCE")
@click.argument("where", metavar="OID")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, writable=True))
@click.option("--database", default=None, help="The database of OID in a collection (default: the first).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(source: str, where: str, file: str, database: str | None, as_json: bool) -> None:
    """Export an object and everything it reaches (across the databases of a
    collection) to FILE, for `atoll import`. OID is an oid (0x12, NAME:0x12) or a
    path of keys from the root (people/ada). References that leave the exported
    set are listed. Reads only.

    \b
    Examples:
      atoll export app.db people/ada ada.atollx
      atoll export app.conf orders:0x2a order.atollx
    """
    from atoll.cli.commands import _locate
    from atoll.collection.exporting import export_objects

    with _operating(source, read_only=True) as (opened, bar):
        db, oid = _locate(opened, database, where)
        stats = export_objects(db, oid, file, database=db.database_name, progress=bar)
    if as_json:
        print_json({
            "root": f"{stats.root[0]}:0x{stats.root[1].hex()}", "records": stats.records, "bytes": stats.size,
            "databases": stats.per_database, "seconds": stats.seconds,
            "leaving": [f"{a}:0x{b.hex()} -> {c}:0x{d.hex()}" for a, b, c, d in stats.leaving],
        })
        return
    click.echo(str(stats))
    for a, b, c, d in stats.leaving[:10]:
        click.echo(f"  leaves the set: {a}:0x{b.hex()} -> {c}:0x{d.hex()}")
    if len(stats.leaving) > 10:
        click.echo(f"  ... and {len(stats.leaving) - 10:,} more")


@cli.command("import")
@click.argument("destination", metavar="DEST")
@click.argument("file", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, help="Store the imported object as root[KEY] (refused if KEY exists).")
@click.option("--database", default=None, help="The database to import into (default: the one of the same name).")
@click.option("--keep-leaving", is_flag=True,
              help="Import references that leave the exported set, pointing at the same oids (default: refuse).")
@click.option("--json", "as_json", is_flag=True, help="Print what was added as JSON.")
def import_(destination: str, file: str, key: str, database: str | None, keep_leaving: bool, as_json: bool) -> None:
    """Import an `atoll export` FILE into DEST in one transaction: every object gets
    a new oid, references inside the set follow, and the exported object is
    stored as root[KEY]. Importing twice gives two independent copies. Refused,
    writing nothing, when FILE is not an atoll export or has references leaving
    the set (unless --keep-leaving).

    \b
    Examples:
      atoll import other.db ada.atollx --key ada
      atoll import other.conf order.atollx --key first_order --keep-leaving
    """
    from atoll.collection.exporting import import_objects

    with _operating(destination, read_only=False) as (opened, bar):
        if database is not None:
            opened.pick(database)  # a one-line error for an unknown name
        stats = import_objects(opened.databases, file, key, database=database,
                               leaving="keep" if keep_leaving else "refuse", progress=bar)
    if as_json:
        print_json({
            "root": f"{stats.root[0]}:0x{stats.root[1].hex()}", "key": key, "records": stats.records,
            "bytes": stats.size, "databases": stats.per_database, "leaving_kept": len(stats.leaving),
            "seconds": stats.seconds,
        })
        return
    click.echo(f"{stats} as root[{key!r}] of {stats.root[0]} (0x{stats.root[1].hex()})")
