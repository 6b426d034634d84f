"""atoll.config and storage URIs against the PostgreSQL test server.

Each test uses its own PostgreSQL schemas and drops them; without a server the tests
skip (or fail under ATOLL_REQUIRE_POSTGRES=1, see tests/postgres_support.py).
"""

from __future__ import annotations

import uuid

import pytest
import transaction
from persistent.mapping import PersistentMapping
from postgres_support import drop_schema, postgres_dsn, require_postgres

from atoll.config import databaseFromString
from atoll.storage.targets import open_storage


@pytest.fixture
def schemas():
    """A function making fresh schema names; the schemas are dropped afterwards."""
    require_postgres()
    made: list[str] = []

    def new(label: str) -> str:
        made.append(f"atoll_test_config_{label}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for schema in made:
        drop_schema(schema)


def postgres_uri(**query: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(postgres_dsn())
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}?{params}"


def test_a_collection_of_two_schemas_from_one_file(schemas):
    main, catalog = schemas("main"), schemas("catalog")
    text = f"""
    <zodb main>
      <postgresqlstorage>
        dsn {postgres_dsn()}
        schema {main}
        lock-wait 1s
      </postgresqlstorage>
    </zodb>
    <zodb catalog>
      <postgresqlstorage>
        dsn {postgres_dsn()}
        schema {catalog}
        keep-history false
      </postgresqlstorage>
    </zodb>
    """
    db = databaseFromString(text)
    try:
        assert db.storage.schema == main and db.storage.lock_wait == 1
        assert db.databases["catalog"].storage.schema == catalog
        assert not db.databases["catalog"].storage.keep_history
        conn = db.open()
        index = PersistentMapping(title="index")
        conn.get_connection("catalog").add(index)
        conn.root()["index"] = index
        transaction.commit()
        conn.close()
    finally:
        for each in list(db.databases.values()):
            each.close()

    db = databaseFromString(text)
    try:
        conn = db.open()
        index = conn.root()["index"]
        assert index["title"] == "index"
        assert index._p_jar.db() is db.databases["catalog"]
        conn.close()
    finally:
        for each in list(db.databases.values()):
            each.close()


def test_uri_options_reach_the_storage_and_libpq_keeps_its_own(schemas):
    schema = schemas("uri")
    storage = open_storage(
        postgres_uri(schema=schema, keep_history="false", two_phase="no", connect_timeout="5")
    )
    try:
        assert storage.schema == schema
        assert not storage.keep_history and not storage.two_phase
    finally:
        storage.close()
