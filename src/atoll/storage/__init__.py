"""Storage backends. The protocol they implement is in :mod:`atoll.storage.base`.

The classes are imported on first use, so that ``import atoll`` does not load a
backend (and its driver) that the application never opens.
"""

from __future__ import annotations

import importlib

__all__ = ["MemoryStorage", "MinimalMemoryStorage", "SQLiteStorage", "PostgreSQLStorage"]

_where = {
    "MemoryStorage": "atoll.storage.memory",
    "MinimalMemoryStorage": "atoll.storage.memory",
    "SQLiteStorage": "atoll.storage.sqlite",
    "PostgreSQLStorage": "atoll.storage.postgresql",
}


def __getattr__(name: str) -> object:
    if name in _where:
        return getattr(importlib.import_module(_where[name]), name)
    raise AttributeError(f"module 'atoll.storage' has no attribute {name!r}")
