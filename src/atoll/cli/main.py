"""The ``atoll`` command: its group, global options, and how errors are shown.

Every command is thin: it opens what its TARGET names (:mod:`atoll.cli.opening`),
calls the library, and prints (:mod:`atoll.cli.output`). A failure is one line on
standard error, naming the thing and what to do, and exit status 1; a usage error
(bad option, missing file, unknown URI scheme) exits with 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from atoll.errors import POSError

__all__ = ["main", "cli"]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) if str(error).strip() else ""
    if isinstance(error, KeyError) and len(error.args) == 1 and not isinstance(error, POSError):
        text = f"no such key: {error.args[0]!r}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Group(click.Group):
    """Runs a command and turns any failure into one line (unless ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("atoll: interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # every other failure: one line, exit status 1
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"atoll: error: {_one_line(error)}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the whole traceback of a failure.")
@click.version_option(package_name="atoll", prog_name="atoll")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Look inside atoll databases and collections, and operate on them.

    Every command takes a TARGET: a database file (SQLite), a URI
    (sqlite:///abs/path.db, postgresql://user@host/db, memory://) or a .conf file;
    a .conf file with several <zodb> sections is a collection, and commands cover
    all of its databases. Reading commands open storages read-only.

    \b
    Examples:
      atoll info app.db
      atoll ls app.db people/ada
      atoll log app.conf -n 5
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """The console script's entry point."""
    return cli.main(args=argv, prog_name="atoll")
