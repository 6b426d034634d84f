"""The persistent objects the workloads write and read.

Both systems store the same class, so a record differs only by what each system's
serializer adds around it. ``Item`` carries about 100 bytes of payload, the size the
speed claims are stated for.
"""

from __future__ import annotations

from persistent import Persistent

PAYLOAD_SIZE = 100


def payload(n: int, generation: int = 0) -> str:
    """A ~100-character string unique to item ``n`` and write ``generation``."""
    head = f"item {n} gen {generation} "
    return head + "x" * (PAYLOAD_SIZE - len(head))


class Item(Persistent):
    """One benchmark object: an int, a ~100-byte string, and an optional peer.

    ``peer`` is set only in the multi-database workload, where it refers to an item
    of the other database (a cross-database reference).
    """

    peer: Item | None = None

    def __init__(self, n: int) -> None:
        self.n = n
        self.data = payload(n)
