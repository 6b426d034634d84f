"""The ``storage`` fixture: every storage backend, for the contract suite.

Parameters: ``memory``, ``minimal``, ``sqlite``, ``sqlite-history-free``,
``postgresql`` and ``postgresql-history-free``. ``sqlite`` is a default file (no
record cache), ``sqlite-history-free`` one with a record cache. The PostgreSQL ones
come from ``tests/postgres_support.py`` (``make_storage(name, **kwargs)``), which
skips when no server is reachable; they skip too while that helper does not exist.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Iterator

import pytest

from atoll.storage.base import Storage

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for postgres_support


def _postgres(request: pytest.FixtureRequest, keep_history: bool) -> Storage:
    try:
        support = importlib.import_module("postgres_support")
    except ImportError as e:
        pytest.skip(f"tests/postgres_support.py is not available ({e})")
    return support.make_storage(request.node.name, keep_history=keep_history)


def _sqlite(tmp_path: Path, keep_history: bool) -> Storage:
    from atoll.storage.sqlite import SQLiteStorage

    # The default file keeps no record cache; the history-free one gets one, so the
    # contract holds for both ways of reading.
    cache_size_bytes = 0 if keep_history else 16 << 20
    return SQLiteStorage(tmp_path / "contract.db", keep_history=keep_history, cache_size_bytes=cache_size_bytes)


def _memory(keep_history: bool) -> Storage:
    from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage

    return MemoryStorage() if keep_history else MinimalMemoryStorage()


STORAGES = ["memory", "minimal", "sqlite", "sqlite-history-free", "postgresql", "postgresql-history-free"]


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A new, empty storage of each kind, closed after the test."""
    kind: str = request.param
    keep_history = kind != "minimal" and not kind.endswith("history-free")
    if kind.startswith("postgresql"):
        made = _postgres(request, keep_history)
    elif kind.startswith("sqlite"):
        made = _sqlite(tmp_path, keep_history)
    else:
        made = _memory(keep_history)
    yield made
    made.close()
