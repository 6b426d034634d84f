"""Operations on a whole multi-database collection (the ``databases`` dict of its
DBs): undo across databases (:mod:`atoll.collection.undo`)."""

from __future__ import annotations

from atoll.collection.undo import undo_log

__all__ = ["undo_log"]
