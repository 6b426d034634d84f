"""atoll.config end to end: files into open databases and storages."""

from __future__ import annotations

import io
import textwrap

import pytest
import transaction
import ZConfig
from persistent.mapping import PersistentMapping

from atoll.config import (
    databaseFromFile,
    databaseFromString,
    databaseFromURL,
    getDbSchema,
    storageFromFile,
    storageFromString,
    storageFromURL,
)
from atoll.config.factories import MappingStorageFactory
from atoll.db import DB
from atoll.errors import StorageError
from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage
from atoll.storage.sqlite import SQLiteStorage


def close_all(db: DB) -> None:
    for each in list(db.databases.values()):
        each.close()


def assert_closed(storage) -> None:
    with pytest.raises(StorageError):
        storage.new_oid()


SEED = """
<zodb>
  <mappingstorage/>
  database-name this_is_the_name
</zodb>
"""


def test_the_seed_names_a_database_and_joins_a_second_through_the_factory():
    db = databaseFromString(SEED)
    try:
        assert isinstance(db, DB)
        assert db.database_name == "this_is_the_name"
        assert list(db.databases.keys()) == ["this_is_the_name"]
        assert isinstance(db.storage, MemoryStorage)

        config2 = SEED.replace("this_is_the_name", "another_name")
        zconfig, _handle = ZConfig.loadConfigFile(getDbSchema(), io.StringIO(config2))
        factory = zconfig.database
        db2 = factory.open(databases=db.databases)
        try:
            assert db2.database_name == "another_name"
            assert db.databases is db2.databases
            assert sorted(db2.databases.keys()) == ["another_name", "this_is_the_name"]
        finally:
            db2.close()
    finally:
        db.close()


def test_several_sections_form_one_collection(tmp_path):
    db = databaseFromString(
        f"""
        <zodb main>
          <sqlitestorage>
            path {tmp_path}/main.db
          </sqlitestorage>
        </zodb>
        <zodb catalog>
          <memorystorage>
            keep-history false
          </memorystorage>
        </zodb>
        <zodb>
          <mappingstorage/>
          database-name scratch
        </zodb>
        """
    )
    try:
        assert db.database_name == "main"
        assert sorted(db.databases) == ["catalog", "main", "scratch"]
        assert all(each.databases is db.databases for each in db.databases.values())
        assert isinstance(db.storage, SQLiteStorage)
        assert type(db.databases["catalog"].storage) is MinimalMemoryStorage
        assert type(db.databases["scratch"].storage) is MemoryStorage

        conn = db.open()
        index = PersistentMapping(title="index")
        conn.get_connection("catalog").add(index)
        conn.root()["index"] = index
        transaction.commit()
        conn.close()
    finally:
        close_all(db)
    # Reopened from the same file: the cross-database reference survived.
    db = databaseFromString(
        f"<zodb main>\n<sqlitestorage>\npath {tmp_path}/main.db\n</sqlitestorage>\n</zodb>\n"
        "<zodb catalog>\n<memorystorage/>\n</zodb>\n"
    )
    try:
        conn = db.open()
        assert "index" in conn.root()
        conn.close()
    finally:
        close_all(db)


def test_sqlite_keys_reach_the_storage(tmp_path):
    path = tmp_path / "x.db"
    storage = storageFromString(f"<sqlitestorage>\npath {path}\nkeep-history false\n</sqlitestorage>")
    try:
        assert isinstance(storage, SQLiteStorage)
        assert not storage.keep_history and not storage.read_only
    finally:
        storage.close()
    storage = storageFromString(
        f"<sqlitestorage>\npath {path}\nread-only true\nkeep-history false\n"
        "synchronous NORMAL\ncache-size-bytes 1MB\n</sqlitestorage>"
    )
    try:
        assert storage.read_only and not storage.keep_history
        assert storage._records.max_bytes == 1 << 20
    finally:
        storage.close()


def test_duplicate_database_names_open_nothing(tmp_path):
    text = "".join(
        f"<zodb>\n<sqlitestorage>\npath {tmp_path}/{n}.db\n</sqlitestorage>\ndatabase-name same\n</zodb>\n"
        for n in (1, 2)
    )
    with pytest.raises(ValueError, match="^database_name 'same' already in databases$"):
        databaseFromString(text)
    assert list(tmp_path.iterdir()) == []


def test_joining_a_collection_that_has_the_name_opens_nothing(tmp_path):
    databases = {"main": object()}
    zconfig, _ = ZConfig.loadConfigFile(
        getDbSchema(),
        io.StringIO(f"<zodb main>\n<sqlitestorage>\npath {tmp_path}/m.db\n</sqlitestorage>\n</zodb>\n"),
    )
    with pytest.raises(ValueError, match="database_name 'main' already in databases"):
        zconfig.database.open(databases=databases)
    with pytest.raises(ValueError, match="database_name 'main' already in databases"):
        zconfig.database[0].open(databases=databases)
    assert list(databases) == ["main"]
    assert list(tmp_path.iterdir()) == []


class Recording(dict):
    """A databases dict that remembers every DB registered in it."""

    def __init__(self) -> None:
        super().__init__()
        self.registered: list[DB] = []

    def __setitem__(self, name, db) -> None:
        self.registered.append(db)
        super().__setitem__(name, db)


def test_a_failed_open_closes_and_unregisters_the_databases_before_it(tmp_path):
    (tmp_path / "dir.db").mkdir()  # not a file SQLite can open
    zconfig, _ = ZConfig.loadConfigFile(
        getDbSchema(),
        io.StringIO(
            textwrap.dedent(
                f"""
                <zodb first>
                  <memorystorage/>
                </zodb>
                <zodb second>
                  <sqlitestorage>
                    path {tmp_path}/dir.db
                  </sqlitestorage>
                </zodb>
                """
            )
        ),
    )
    databases = Recording()
    with pytest.raises(Exception) as info:
        zconfig.database.open(databases=databases)
    assert "dir.db" in str(info.value)
    assert dict(databases) == {}
    [first] = databases.registered
    assert first.database_name == "first"
    assert_closed(first.storage)


def test_a_db_that_cannot_be_created_closes_its_storage(monkeypatch):
    opened = []
    original = MappingStorageFactory.open

    def recording_open(self):
        opened.append(original(self))
        return opened[-1]

    monkeypatch.setattr(MappingStorageFactory, "open", recording_open)
    (factory,) = ZConfig.loadConfigFile(
        getDbSchema(), io.StringIO("<zodb>\n<mappingstorage/>\n</zodb>\n")
    )[0].database

    class Refusing(dict):
        def __setitem__(self, name, db):
            raise RuntimeError("no room")

    with pytest.raises(RuntimeError, match="no room"):
        factory.open(databases=Refusing())
    [storage] = opened
    assert_closed(storage)


def test_files_paths_and_urls(tmp_path):
    path = tmp_path / "app.conf"
    path.write_text(SEED)
    for source in (path, str(path)):
        db = databaseFromFile(source)
        assert db.database_name == "this_is_the_name"
        db.close()
    with path.open() as f:
        db = databaseFromFile(f)
    assert db.database_name == "this_is_the_name"
    db.close()
    db = databaseFromURL(path.as_uri())
    assert db.database_name == "this_is_the_name"
    db.close()

    storage_path = tmp_path / "storage.conf"
    storage_path.write_text("<mappingstorage>\n  name kept\n</mappingstorage>\n")
    for storage in (storageFromFile(storage_path), storageFromURL(storage_path.as_uri())):
        assert isinstance(storage, MemoryStorage) and storage.name == "kept"
        storage.close()


def test_include_and_define(tmp_path):
    (tmp_path / "catalog.conf").write_text("<zodb catalog>\n  <memorystorage/>\n</zodb>\n")
    path = tmp_path / "app.conf"
    path.write_text(
        "%define DIR " + str(tmp_path) + "\n"
        "<zodb main>\n  <sqlitestorage>\n    path $DIR/main.db\n  </sqlitestorage>\n</zodb>\n"
        "%include catalog.conf\n"
    )
    db = databaseFromFile(path)
    try:
        assert sorted(db.databases) == ["catalog", "main"]
        assert (tmp_path / "main.db").exists()
    finally:
        close_all(db)


def test_atoll_open_takes_a_conf_file_and_uris(tmp_path):
    import atoll

    path = tmp_path / "app.conf"
    path.write_text(
        f"<zodb main>\n<sqlitestorage>\npath {tmp_path}/main.db\n</sqlitestorage>\n</zodb>\n"
        "<zodb catalog>\n<memorystorage/>\n</zodb>\n"
    )
    db = atoll.open(path)
    try:
        assert db.database_name == "main"
        assert sorted(db.databases) == ["catalog", "main"]
    finally:
        close_all(db)

    db = atoll.open(f"sqlite://{tmp_path}/other.db?keep_history=false")
    try:
        assert isinstance(db.storage, SQLiteStorage) and not db.storage.keep_history
    finally:
        db.close()
    db = atoll.open("memory://?keep_history=false")
    try:
        assert type(db.storage) is MinimalMemoryStorage
    finally:
        db.close()
    with pytest.raises(ValueError, match="unknown storage URI scheme 'redis'"):
        atoll.open("redis://localhost/0")
