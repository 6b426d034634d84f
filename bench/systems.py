"""The storages under test, atoll's and ZODB's, and where their data lives.

A :class:`Backend` names one storage configuration of one system and knows how to
build it inside a worker process. Imports of atoll, ZODB and RelStorage happen only
there, so a backend whose package is missing (or not written yet) is reported as
"not available" instead of stopping the run.

Storage kinds that several processes can open at once (SQLite, PostgreSQL) are
*shared*: at concurrency 2 both workers use one database. In-memory storages and
FileStorage (which locks its file) cannot be shared, so each worker gets its own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

# The PostgreSQL server the benchmark uses; each repetition gets fresh databases on it.
DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"

# RelStorage's SQLite adapter defaults to synchronous=NORMAL; atoll's SQLiteStorage
# (like FileStorage, which fsyncs every commit) uses FULL. The benchmark compares
# equal durability, so RelStorage is configured with FULL too.
SQLITE_SYNCHRONOUS = "full"


@dataclass
class Place:
    """Where one repetition's data lives: a fresh directory and PostgreSQL databases."""

    directory: str
    pg_prefix: str
    pg_dsn: str = DEFAULT_PG_DSN
    pg_databases: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def pg_dsn_for(self, dbname: str) -> str:
        """The DSN of the database ``dbname`` of this repetition."""
        return _replace_dbname(self.pg_dsn, f"{self.pg_prefix}_{dbname}")


def _replace_dbname(dsn: str, dbname: str) -> str:
    parts = [p for p in dsn.split() if not p.startswith("dbname=")]
    return " ".join(parts + [f"dbname={dbname}"])


@dataclass(frozen=True)
class Backend:
    """One storage configuration of one system (``system`` is 'atoll' or 'zodb')."""

    key: str
    system: str
    label: str
    shared: bool  # one database for all worker processes
    durable: bool  # survives reopening: cold reads reopen it (else: empty caches)
    postgres: bool  # lives on the PostgreSQL server
    modules: tuple[str, ...]  # importable modules it needs
    build: Callable[[Place, str, int], object]  # (place, database name, worker) -> storage

    def missing(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module)
            except ModuleNotFoundError:
                found = None
            if found is None:
                return f"module {module} not available"
        return None


def _atoll_memory(place: Place, name: str, worker: int) -> object:
    from atoll.storage import MemoryStorage

    return MemoryStorage()


def _atoll_sqlite(place: Place, name: str, worker: int) -> object:
    from atoll.storage import SQLiteStorage

    return SQLiteStorage(place.path(f"atoll-{name}.db"))


def _atoll_postgresql(place: Place, name: str, worker: int) -> object:
    from atoll.storage import PostgreSQLStorage

    return PostgreSQLStorage(place.pg_dsn_for(name))


def _zodb_mapping(place: Place, name: str, worker: int) -> object:
    from ZODB.MappingStorage import MappingStorage

    return MappingStorage()


def _zodb_filestorage(place: Place, name: str, worker: int) -> object:
    from ZODB.FileStorage import FileStorage

    return FileStorage(place.path(f"zodb-{name}-w{worker}.fs"))


def _relstorage(adapter_config: str) -> object:
    from ZODB.config import storageFromString

    return storageFromString(
        "%import relstorage\n"
        "<relstorage>\n  keep-history true\n" + adapter_config + "</relstorage>\n"
    )


def _zodb_relstorage_sqlite(place: Place, name: str, worker: int) -> object:
    data_dir = place.path(f"relstorage-{name}")
    os.makedirs(data_dir, exist_ok=True)
    return _relstorage(
        f"  <sqlite3>\n    data-dir {data_dir}\n"
        f"    <pragmas>\n      synchronous {SQLITE_SYNCHRONOUS}\n    </pragmas>\n"
        "  </sqlite3>\n"
    )


def _zodb_relstorage_postgresql(place: Place, name: str, worker: int) -> object:
    return _relstorage(f"  <postgresql>\n    dsn {place.pg_dsn_for(name)}\n  </postgresql>\n")


BACKENDS: dict[str, Backend] = {
    b.key: b
    for b in [
        Backend("atoll-memory", "atoll", "atoll MemoryStorage", False, False, False,
                ("atoll.db", "atoll.storage.memory"), _atoll_memory),
        Backend("atoll-sqlite", "atoll", "atoll SQLiteStorage", True, True, False,
                ("atoll.db", "atoll.storage.sqlite"), _atoll_sqlite),
        Backend("atoll-postgresql", "atoll", "atoll PostgreSQLStorage", True, True, True,
                ("atoll.db", "atoll.storage.postgresql", "psycopg"), _atoll_postgresql),
        Backend("zodb-mapping", "zodb", "ZODB MappingStorage", False, False, False,
                ("ZODB",), _zodb_mapping),
        Backend("zodb-filestorage", "zodb", "ZODB FileStorage", False, True, False,
                ("ZODB",), _zodb_filestorage),
        Backend("zodb-relstorage-sqlite", "zodb", "RelStorage SQLite", True, True, False,
                ("ZODB", "relstorage"), _zodb_relstorage_sqlite),
        Backend("zodb-relstorage-postgresql", "zodb", "RelStorage PostgreSQL", True, True,
                True, ("ZODB", "relstorage", "psycopg2"), _zodb_relstorage_postgresql),
    ]
}

# The comparisons the report makes: (atoll backend, ZODB backend).
PAIRS: list[tuple[str, str]] = [
    ("atoll-memory", "zodb-mapping"),
    ("atoll-sqlite", "zodb-filestorage"),
    ("atoll-sqlite", "zodb-relstorage-sqlite"),
    ("atoll-postgresql", "zodb-relstorage-postgresql"),
]


def make_db(backend: Backend, storage: object, name: str, databases: dict,
            cache_size: int) -> object:
    """A DB of ``backend``'s system over ``storage``, registered in ``databases``."""
    if backend.system == "atoll":
        import atoll

        return atoll.DB(storage, database_name=name, databases=databases,
                        cache_size=cache_size)
    import ZODB

    return ZODB.DB(storage, database_name=name, databases=databases,
                   cache_size=cache_size)


def new_place(root: str, pg_dsn: str, tag: str) -> Place:
    """A fresh place for one repetition: a new directory under ``root``."""
    os.makedirs(root, exist_ok=True)
    directory = tempfile.mkdtemp(prefix=f"{tag}-", dir=root)
    return Place(directory=directory, pg_prefix=f"bench_{os.getpid()}_{tag}".replace("-", "_"),
                 pg_dsn=pg_dsn)


def _admin(pg_dsn: str) -> Any:
    """A psycopg (3) connection to the server's ``pg_dsn`` database, in autocommit mode."""
    import psycopg

    return psycopg.connect(pg_dsn, autocommit=True)


def pg_unavailable(pg_dsn: str) -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can."""
    try:
        with _admin(pg_dsn) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means: skip the PostgreSQL backends
        return f"PostgreSQL unavailable: {type(exc).__name__}: {str(exc).strip()[:80]}"
    return None


def create_pg_databases(place: Place, names: list[str]) -> None:
    """Create this repetition's (empty) PostgreSQL databases ``names``."""
    with _admin(place.pg_dsn) as conn:
        for name in names:
            full = f"{place.pg_prefix}_{name}"
            conn.execute(f'DROP DATABASE IF EXISTS "{full}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{full}"')
            place.pg_databases.append(full)


def remove_place(place: Place) -> None:
    """Delete a repetition's directory and PostgreSQL databases."""
    shutil.rmtree(place.directory, ignore_errors=True)
    if place.pg_databases:
        with _admin(place.pg_dsn) as conn:
            for full in place.pg_databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{full}" WITH (FORCE)')
        place.pg_databases.clear()
