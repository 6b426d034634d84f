"""Fixtures for the ``atoll`` command's tests: targets with known contents, and a
runner that invokes the command as a user would (through click's test runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from click.testing import CliRunner, Result
from persistent.mapping import PersistentMapping

import atoll
from atoll.cli import main as _main  # noqa: F401 - imports the commands
from atoll.cli.main import cli


def fill(db: atoll.DB) -> None:
    """The contents every target gets: people/ada (two revisions), a count."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    try:
        conn.root()["people"] = OOBTree()
        conn.root()["people"]["ada"] = PersistentMapping(born=1815, name="Ada")
        conn.root()["count"] = 3
        manager.get().note("add ada")
        manager.get().setUser("tester")
        manager.commit()
        conn.root()["people"]["ada"]["born"] = 1816
        manager.get().note("fix ada")
        manager.commit()
    finally:
        conn.close()


@pytest.fixture
def sqlite_target(tmp_path: Path) -> str:
    path = str(tmp_path / "app.db")
    db = atoll.open(path)
    fill(db)
    db.close()
    return path


@pytest.fixture
def postgres_target() -> Iterator[str]:
    import postgres_support

    storage = postgres_support.make_storage("cli")
    db = atoll.DB(storage)
    fill(db)
    uri = storage.name  # postgresql://user@host:port/db?schema=...
    db.close()
    yield uri


@pytest.fixture
def collection_target(tmp_path: Path) -> str:
    """A config file of two SQLite databases, 'users' and 'orders', with a
    reference from orders to users."""
    users_path, orders_path = tmp_path / "users.db", tmp_path / "orders.db"
    conf = tmp_path / "app.conf"
    conf.write_text(
        f"<zodb users>\n  <sqlitestorage>\n    path {users_path}\n  </sqlitestorage>\n</zodb>\n"
        f"<zodb orders>\n  <sqlitestorage>\n    path {orders_path}\n  </sqlitestorage>\n</zodb>\n"
    )
    db = atoll.open(str(conf))
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    ada = PersistentMapping(name="Ada")
    conn.root()["ada"] = ada
    conn.add(ada)
    orders = conn.get_connection("orders")
    orders.root()["first"] = PersistentMapping(customer=ada)
    manager.get().note("first order")
    manager.commit()
    conn.close()
    for each in list(db.databases.values()):
        each.close()
    return str(conf)


@pytest.fixture
def memory_config(tmp_path: Path) -> str:
    conf = tmp_path / "memory.conf"
    conf.write_text("<zodb main>\n  <mappingstorage/>\n</zodb>\n<zodb other>\n  <mappingstorage/>\n</zodb>\n")
    return str(conf)


@pytest.fixture
def run() -> Callable[..., Result]:
    """``run("info", target)``: the command's result; ``--json`` output parsed by
    ``run.json(...)``."""
    runner = CliRunner()

    def invoke(*args: str, expect: int = 0) -> Result:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == expect, (result.exit_code, result.output)
        return result

    def as_json(*args: str) -> Any:
        return json.loads(invoke(*args, "--json").stdout)

    invoke.json = as_json  # type: ignore[attr-defined]
    return invoke
