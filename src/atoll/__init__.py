"""atoll: a transactional object database for Python.

``atoll.open(target)`` gives a :class:`DB`; ``atoll.connect(target)`` a connection
that also closes its database. ``target`` is a storage object, a path to an SQLite
file, a URI (``memory://``, ``sqlite:///abs/path.db``, ``postgresql://...``), a
``.conf`` file, or None for an in-memory database.
"""

from __future__ import annotations

import os
from typing import Any

from atoll.connection import Connection
from atoll.db import DB

__version__ = "0.1.0"

__all__ = ["DB", "Connection", "open", "connect", "copy", "__version__"]


def open(target: Any = None, **db_kwargs: Any) -> DB:  # noqa: A001 - the API's name
    """A :class:`DB` for ``target`` (see the module docstring)."""
    if isinstance(target, (str, os.PathLike)) and os.fspath(target).endswith(".conf"):
        from atoll.config import databaseFromFile

        if db_kwargs:
            raise TypeError(f"a .conf file configures its databases itself; got {sorted(db_kwargs)}")
        return databaseFromFile(target)
    return DB(target, **db_kwargs)


def connect(target: Any = None, **db_kwargs: Any) -> Connection:
    """Open a database and a connection to it; closing the connection closes both
    (every database of the collection, when ``target`` is a config file).

    As a context manager the connection commits on a clean exit, aborts on an
    error, and closes.
    """
    db = open(target, **db_kwargs)
    try:
        connection = db.open()
    except BaseException:
        db.close()
        raise
    connection._closes_db = True
    connection._commit_on_exit = True
    return connection


def copy(source: Any, destination: Any, progress: Any = None) -> Any:
    """Copy every transaction of ``source`` into the empty ``destination``, keeping
    tids, metadata and every revision; continue an interrupted copy. Each end is a
    storage, a DB, anything :func:`open` accepts, or a ZODB ``.fs`` file. See
    :func:`atoll.collection.copy.copy`."""
    from atoll.collection.copy import copy as copy_transactions

    return copy_transactions(source, destination, progress)
