"""Small pieces of SQLite rows that the storage, its views and its pack share: how
oids travel to a query, how a transaction row lists its oids, and the hot paths'
direct converters."""

from __future__ import annotations

import struct
import zlib
from typing import Iterable

__all__ = ["BATCH", "MAX_ID", "json_ids", "split_oids"]

#: Oids per JSON batch in load_many and the pack's walk.
BATCH = 1000
#: The largest tid/oid SQLite can hold (signed 64 bits): "no upper bound".
MAX_ID = 2**63 - 1

# The hot paths convert oids and tids with these directly (ids.p64/u64 add a call).
_pack64 = struct.Struct(">Q").pack
_unpack64 = struct.Struct(">Q").unpack
_iter_unpack64 = struct.Struct(">Q").iter_unpack  # every oid of a transactions.oids value
# ... and check checksums inline (see checksum.py; a call per record costs more).
_crc32 = zlib.crc32
_OFFSET = 1 << 31


def json_ids(ids: Iterable[int]) -> str:
    """A JSON array of integers: how a batch of oids reaches a query (``json_each``)."""
    return "[" + ",".join(map(str, ids)) + "]"


def split_oids(packed: bytes) -> list[bytes]:
    """The oids of a ``transactions.oids`` value (concatenated 8-byte oids)."""
    return [packed[i : i + 8] for i in range(0, len(packed), 8)]
