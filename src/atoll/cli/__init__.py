"""The ``atoll`` command line: one command for every storage and for collections.

``atoll.cli.main`` is the console script; the commands live in
:mod:`atoll.cli.commands` (reading) and :mod:`atoll.cli.operations` (pack, check,
copy and the other operations), each a thin layer over a library call. See
``docs/cli.md``.
"""

from __future__ import annotations

from atoll.cli.main import cli, main
from atoll.cli import commands, operations  # noqa: E402,F401 - registers the commands on ``cli``

__all__ = ["main", "cli"]
