"""The oid blocks a storage instance gave up because oids in them may be stored.

Each storage instance hands out oids from a block it reserved from the database's
counter. A copy or a restore writes oids that no new_oid() handed out; when some
fall in a block a process reserved earlier, that process learns of it late (at
its next poll that sees them, or at a commit that finds the database's oid epoch
moved) and gives the rest of the block up. Oids it handed out from the block
before that, to transactions still under way, may be taken: a commit creating an
object with such an oid must check it even when nothing was committed since its
snapshot (when the conflict check is otherwise skipped), so that it fails with
ConflictError instead of replacing the stored object.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from atoll.ids import u64, z64

__all__ = ["StaleBlocks"]


class StaleBlocks:
    """The ranges of oids ``[start, limit)`` of the blocks given up that way."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []

    def add(self, start: int, limit: int) -> None:
        """Note the block ``[start, limit)`` as given up (nothing if empty)."""
        if start < limit:
            self._ranges.append((start, limit))

    def hold_any(self, oids: Iterable[bytes]) -> bool:
        """Whether any of ``oids`` lies in a block given up (False at once when none was)."""
        if not self._ranges:
            return False
        return any(start <= u64(oid) < limit for oid in oids for start, limit in self._ranges)

    def hold_created(self, stores: Mapping[bytes, tuple[bytes, bytes]]) -> bool:
        """Whether a commit's ``stores`` (oid -> (read serial, data)) create an
        object whose oid lies in a block given up: that commit must be checked."""
        return bool(self._ranges) and self.hold_any(oid for oid, (serial, _) in stores.items() if serial == z64)
