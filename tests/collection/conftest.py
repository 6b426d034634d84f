"""Collections of three databases on every kind of storage, for the collection tests.

``kind`` is the storage of each member: all memory, all SQLite, all PostgreSQL, or
mixed (SQLite, PostgreSQL, history-free SQLite). :func:`make` opens (and reopens)
the members by name over the same data.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Iterator

import pytest

import atoll
from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for helpers and postgres_support

NAMES = ("a", "b", "c")
KINDS = {
    "memory": ("memory", "memory", "minimal"),
    "sqlite": ("sqlite", "sqlite", "sqlite-hf"),
    "postgresql": ("postgresql", "postgresql-hf", "postgresql"),
    "mixed": ("sqlite", "postgresql", "sqlite-hf"),
}


class Collection:
    """Opens members of one collection by name; each call to :meth:`open` gives a new
    ``databases`` dict over the same data (memory storages are kept, not closed)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kinds = dict(zip(NAMES, KINDS[kind]))
        self.tmp_path = tmp_path
        self.request = request
        self.memory: dict[str, MemoryStorage] = {}
        self.schemas: dict[str, str] = {}
        self.opened: list[atoll.DB] = []

    def storage(self, name: str):
        kind = self.kinds[name]
        if kind in ("memory", "minimal"):
            if name not in self.memory:
                self.memory[name] = MemoryStorage(name) if kind == "memory" else MinimalMemoryStorage(name)
            return self.memory[name]
        if kind.startswith("sqlite"):
            from atoll.storage.sqlite import SQLiteStorage

            return SQLiteStorage(self.tmp_path / f"{name}.db", keep_history=kind == "sqlite")
        support = importlib.import_module("postgres_support")
        if name not in self.schemas:
            storage = support.make_storage(f"{self.request.node.name}_{name}", keep_history=kind == "postgresql")
            self.schemas[name] = storage.schema
            return storage
        from atoll.storage.postgresql import PostgreSQLStorage

        return PostgreSQLStorage(support.postgres_dsn(), schema=self.schemas[name], keep_history=kind == "postgresql")

    def open(self, names: tuple[str, ...] = NAMES) -> dict[str, atoll.DB]:
        databases: dict[str, atoll.DB] = {}
        for name in names:
            self.opened.append(atoll.DB(self.storage(name), database_name=name, databases=databases))
        return databases

    def close(self, databases: dict[str, atoll.DB]) -> None:
        for db in databases.values():
            if self.kinds[db.database_name] not in ("memory", "minimal"):
                db.close()  # a memory storage stays open for the next open()

    def close_all(self) -> None:
        for db in self.opened:
            if not db._closed:
                db.close()


@pytest.fixture(params=list(KINDS))
def collection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collection]:
    made = Collection(request.param, tmp_path, request)
    yield made
    made.close_all()

