"""Operations on a whole collection of databases (or on one database).

Each works over the storage protocol and takes the collection as its ``databases``
dict, a ``DB``, or a target (path, URI, ``.conf`` file):

- :func:`backup` (:mod:`atoll.collection.backup`): a live backup of SQLite files.
- :func:`copy` (:mod:`atoll.collection.copy`): every transaction into another
  storage, ZODB FileStorage included; restartable.
- :func:`undo_log` (:mod:`atoll.collection.undo`): undo across databases.
- :func:`open_databases`, :func:`open_storages` (:mod:`atoll.collection.targets`):
  what a target names.
"""

from __future__ import annotations

from atoll.collection.backup import BackupStats, backup
from atoll.collection.copy import CopyStats, copy
from atoll.collection.targets import TargetError, open_databases, open_storages
from atoll.collection.undo import undo_log

__all__ = ["backup", "BackupStats", "copy", "CopyStats", "undo_log", "open_databases", "open_storages", "TargetError"]
