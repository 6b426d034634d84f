"""atoll.config: parsing files into factories, and rejecting bad files.

Nothing here opens a database: parsing must create nothing, so the factories'
arguments are checked instead.
"""

from __future__ import annotations

import io
import textwrap

import pytest
import ZConfig

from atoll.config import (
    ConfigError,
    databaseFromFile,
    databaseFromString,
    getDbSchema,
    getStorageSchema,
    storageFromString,
)
from atoll.config.factories import (
    DatabaseFactories,
    DatabaseFactory,
    MappingStorageFactory,
    MemoryStorageFactory,
    PostgreSQLStorageFactory,
    SQLiteStorageFactory,
)


def load(text: str):
    config, _handlers = ZConfig.loadConfigFile(getDbSchema(), io.StringIO(textwrap.dedent(text)))
    return config


def test_the_schemas_are_loaded_once():
    assert getDbSchema() is getDbSchema()
    assert getStorageSchema() is getStorageSchema()


def test_database_is_a_list_of_factories_in_file_order(tmp_path):
    config = load(
        f"""
        <zodb Main>
          <mappingstorage/>
        </zodb>
        <zodb catalog>
          <sqlitestorage>
            path {tmp_path}/catalog.db
          </sqlitestorage>
          database-name cat
        </zodb>
        <zodb>
          <postgresqlstorage>
            dsn dbname=test host=127.0.0.1
            keep-history false
          </postgresqlstorage>
        </zodb>
        """
    )
    factories = config.database
    assert isinstance(factories, DatabaseFactories) and isinstance(factories, list)
    assert [type(f) for f in factories] == [DatabaseFactory] * 3
    # ZConfig folds section names to lower case; database-name wins over the name.
    assert [f.database_name for f in factories] == ["main", "cat", "unnamed"]
    storages = [f.section.storage for f in factories]
    assert [type(s) for s in storages] == [
        MappingStorageFactory,
        SQLiteStorageFactory,
        PostgreSQLStorageFactory,
    ]
    assert storages[1].section.path == f"{tmp_path}/catalog.db"
    assert storages[1].arguments() == {}  # SQLiteStorage's defaults apply
    assert storages[2].section.dsn == "dbname=test host=127.0.0.1"
    assert storages[2].arguments() == {"keep_history": False}
    assert list(tmp_path.iterdir()) == []  # parsing opened nothing


def test_keys_left_out_are_not_passed_so_db_defaults_apply():
    (factory,) = load("<zodb>\n<mappingstorage/>\n</zodb>").database
    assert factory.arguments() == {"database_name": "unnamed"}


def test_every_zodb_key_maps_onto_a_db_argument():
    (factory,) = load(
        """
        <zodb>
          <memorystorage>
            name scratch
            keep-history false
          </memorystorage>
          database-name main
          cache-size 5000
          cache-size-bytes 20MB
          pool-size 3
          pool-timeout 10m
          historical-pool-size 2
          historical-cache-size 100
          historical-cache-size-bytes 1KB
          historical-timeout 30s
          allow-implicit-cross-references false
        </zodb>
        """
    ).database
    assert factory.arguments() == {
        "database_name": "main",
        "cache_size": 5000,
        "cache_size_bytes": 20 * 1024 * 1024,
        "pool_size": 3,
        "pool_timeout": 600,
        "historical_pool_size": 2,
        "historical_cache_size": 100,
        "historical_cache_size_bytes": 1024,
        "historical_timeout": 30,
        "xrefs": False,
    }
    storage = factory.section.storage
    assert isinstance(storage, MemoryStorageFactory)
    assert storage.arguments() == {"name": "scratch"}
    assert storage.section.keep_history is False


def test_every_storage_key_maps_onto_an_argument(tmp_path):
    sqlite, postgresql = (
        f.section.storage
        for f in load(
            f"""
            <zodb a>
              <sqlitestorage>
                path {tmp_path}/a.db
                read-only yes
                keep-history no
                synchronous Normal
              </sqlitestorage>
            </zodb>
            <zodb b>
              <postgresqlstorage>
                dsn postgresql://me@db.example/app
                schema app_b
                read-only on
                keep-history off
                two-phase false
                commit-lock-timeout 2m
                lock-wait 5
                pool-size 2
              </postgresqlstorage>
            </zodb>
            """
        ).database
    )
    assert sqlite.arguments() == {"read_only": True, "keep_history": False, "synchronous": "normal"}
    assert postgresql.arguments() == {
        "schema": "app_b",
        "read_only": True,
        "keep_history": False,
        "two_phase": False,
        "commit_lock_timeout": 120,
        "lock_wait": 5,
        "pool_size": 2,
    }


def bad(text: str) -> str:
    """The message of the error that loading ``text`` raises (one line)."""
    with pytest.raises(ZConfig.ConfigurationError) as info:
        databaseFromString(text)  # fails while parsing, so before any DB is made
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_key_and_line():
    assert bad("<zodb>\n  <mappingstorage/>\n  cache-sise 10\n</zodb>\n") == (
        "'cache-sise' is not a known key name (line 3)"
    )


def test_unknown_section_names_it_and_line():
    message = bad("<zodb>\n  <filestorage>\n  </filestorage>\n</zodb>\n")
    assert "filestorage" in message and "(line 2)" in message


def test_missing_required_key_names_key_and_line():
    message = bad("<zodb>\n  <sqlitestorage>\n  </sqlitestorage>\n</zodb>\n")
    assert message == "no values for 'path'; 1 required (line 3)"


def test_missing_storage_section():
    assert bad("<zodb>\n  cache-size 3\n</zodb>\n") == (
        "no values for section type 'atoll.storage'; 1 required (line 3)"
    )


def test_two_storage_sections():
    # ZConfig does not know the line of this one.
    assert bad("<zodb>\n<mappingstorage/>\n<memorystorage/>\n</zodb>\n") == (
        "too many instances of 'atoll.storage' section"
    )


@pytest.mark.parametrize(
    "line, words",
    [
        ("cache-size many", ["invalid literal for int()", "many"]),
        ("cache-size -5", ["expected an integer >= 0, got -5"]),
        ("pool-timeout soon", ["soon"]),
        ("cache-size-bytes lots", ["lots"]),
        ("allow-implicit-cross-references perhaps", ["perhaps"]),
    ],
)
def test_wrong_type_names_value_and_line(line, words):
    message = bad(f"<zodb>\n  <mappingstorage/>\n  {line}\n</zodb>\n")
    assert "(line 3" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "line, words",
    [
        ("synchronous off", ["synchronous must be full or normal, not 'off'"]),
        ("keep-history maybe", ["maybe"]),
    ],
)
def test_wrong_storage_key_type_names_value_and_line(line, words, tmp_path):
    message = bad(f"<zodb>\n<sqlitestorage>\n  path {tmp_path}/x.db\n  {line}\n</sqlitestorage>\n</zodb>\n")
    assert list(tmp_path.iterdir()) == []
    assert "(line 4" in message
    for word in words:
        assert word in message


def test_sqlite_directory_must_exist(tmp_path):
    message = bad(f"<zodb>\n<sqlitestorage>\npath {tmp_path}/no/such/x.db\n</sqlitestorage>\n</zodb>\n")
    assert f"{tmp_path}/no/such/x.db" in message and "(line 3)" in message
    assert list(tmp_path.iterdir()) == []


def test_duplicate_section_names():
    message = bad("<zodb a>\n<mappingstorage/>\n</zodb>\n<zodb a>\n<mappingstorage/>\n</zodb>\n")
    assert "'a'" in message and "(line 6)" in message


def test_no_zodb_section():
    assert "section type 'zodb'" in bad("\n")


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "app.conf"
    path.write_text("<zodb>\n  <mappingstorage/>\n  pool-sise 3\n</zodb>\n")
    with pytest.raises(ConfigError) as info:
        databaseFromFile(path)
    assert str(info.value) == f"'pool-sise' is not a known key name (line 3 of {path})"
    with pytest.raises(ConfigError):
        databaseFromFile(str(path))
    with path.open() as f, pytest.raises(ConfigError):
        databaseFromFile(f)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ZConfig.ConfigurationError, match="nope.conf"):
        databaseFromFile(tmp_path / "nope.conf")
    assert list(tmp_path.iterdir()) == []


def test_missing_include_names_it(tmp_path):
    path = tmp_path / "app.conf"
    path.write_text("# databases\n%include other.conf\n")
    with pytest.raises(ZConfig.ConfigurationError, match=f"{tmp_path}/other.conf"):
        databaseFromFile(path)


def test_bad_database_string_raises_before_opening(tmp_path):
    text = f"<zodb>\n<sqlitestorage>\npath {tmp_path}/x.db\n</sqlitestorage>\nfoo 1\n</zodb>\n"
    with pytest.raises(ConfigError, match=r"'foo' is not a known key name \(line 5\)"):
        databaseFromString(text)
    assert list(tmp_path.iterdir()) == []


def test_storage_schema_wants_one_storage_section():
    with pytest.raises(ZConfig.ConfigurationError, match="atoll.storage"):
        storageFromString("")
    with pytest.raises(ConfigError, match=r"'zodb'.* \(line 1\)"):
        storageFromString("<zodb>\n<mappingstorage/>\n</zodb>\n")
