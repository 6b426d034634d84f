"""Operations on a collection of databases as a whole.

A collection is the ``databases`` dict its databases share (name -> :class:`~atoll.DB`).

* :func:`pack`: garbage collection across every member, on any mix of storages.
* :func:`check`: dangling references, unreadable records, missing classes.
* :func:`vacuum`: give the space of removed records back (a pack does it too).
* :func:`undo_log`: transactions to undo across databases (:mod:`atoll.collection.undo`).

The reachability walk every pack uses is in :mod:`atoll.collection.marking`; which
databases a member knows to be in its collection, in
:mod:`atoll.collection.membership`.
"""

from atoll.collection.check import CheckReport, Problem, check
from atoll.collection.pack import Space, pack, vacuum
from atoll.collection.undo import undo_log
from atoll.storage.base import PackStats

__all__ = ["pack", "check", "vacuum", "undo_log", "CheckReport", "Problem", "PackStats", "Space"]
