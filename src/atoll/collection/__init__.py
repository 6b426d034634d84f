"""Operations on a whole collection of databases (or on one database).

A collection is the ``databases`` dict its databases share (name -> :class:`~atoll.DB`).
Each operation works over the storage protocol:

- :func:`pack`: garbage collection across every member, on any mix of storages
  (the walk every pack uses is :mod:`atoll.collection.marking`; which databases a
  member knows to be in its collection, :mod:`atoll.collection.membership`).
- :func:`check`: dangling references, unreadable records, missing classes.
- :func:`vacuum`: give the space of removed records back (a pack does it too).
- :func:`backup` (:mod:`atoll.collection.backup`): a live backup of SQLite files.
- :func:`copy` (:mod:`atoll.collection.copy`): every transaction into another
  storage, ZODB FileStorage included; restartable.
- :func:`export_objects`, :func:`import_objects` (:mod:`atoll.collection.exporting`):
  an object and everything it reaches, across databases, to a file and into
  another database or collection.
- :func:`undo_log` (:mod:`atoll.collection.undo`): undo across databases.
- :func:`open_databases`, :func:`open_storages` (:mod:`atoll.collection.targets`):
  what a target (path, URI, ``.conf`` file) names.
"""

from atoll.collection.backup import BackupStats, backup
from atoll.collection.check import CheckReport, Problem, check
from atoll.collection.copy import CopyStats, copy
from atoll.collection.exporting import ExportStats, ImportStats, export_objects, import_objects
from atoll.collection.pack import Space, pack, vacuum
from atoll.collection.targets import TargetError, open_databases, open_storages
from atoll.collection.undo import undo_log
from atoll.storage.base import PackStats

__all__ = [
    "pack", "check", "vacuum", "CheckReport", "Problem", "PackStats", "Space",
    "backup", "BackupStats", "copy", "CopyStats", "undo_log",
    "export_objects", "import_objects", "ExportStats", "ImportStats", "open_databases", "open_storages", "TargetError",
]
