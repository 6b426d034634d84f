"""Records are exchangeable with ZODB: its FileStorage reads what atoll writes, and back.

ZODB is never a runtime dependency of atoll; the ``test`` extra installs it, so this
test runs with the suite (README's test command).
"""

from __future__ import annotations

import pytest
import transaction
from BTrees.OOBTree import OOBTree

import atoll
from atoll.serialize import record_class, references
from atoll.storage import MemoryStorage
from helpers import Item

ZODB = pytest.importorskip("ZODB", reason="ZODB is not installed here: pip install -e '.[test]'")


def test_zodb_reads_an_atoll_collection_and_atoll_reads_zodb_records(tmp_path):
    import ZODB.FileStorage
    from ZODB.Connection import TransactionMetaData

    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="a", databases=databases)
    atoll.DB(MemoryStorage(), database_name="b", databases=databases)
    conn = first.open()
    conn.root()["tree"] = tree = OOBTree()
    for i in range(100):
        tree[i] = Item(i)
    conn.get_connection("b").root()["x"] = target = Item("in b")
    transaction.commit()
    conn.root()["xref"] = target
    transaction.commit()
    conn.close()

    file_storages = {}
    for name, db in databases.items():
        fs = ZODB.FileStorage.FileStorage(str(tmp_path / f"{name}.fs"))
        for txn in db.storage.iterator():
            meta = TransactionMetaData(txn.user, txn.description)
            fs.tpc_begin(meta, txn.tid)
            for record in txn.records:
                fs.restore(record.oid, record.tid, record.data, "", None, meta)
            fs.tpc_vote(meta)
            fs.tpc_finish(meta)
        file_storages[name] = fs

    zodb_databases: dict = {}
    zodb_a = ZODB.DB(file_storages["a"], database_name="a", databases=zodb_databases)
    ZODB.DB(file_storages["b"], database_name="b", databases=zodb_databases)
    manager = transaction.TransactionManager()
    zconn = zodb_a.open(manager)
    assert sum(item.value for item in zconn.root()["tree"].values()) == 4950
    assert zconn.root()["xref"].value == "in b"
    assert zconn.root()["xref"]._p_jar.db().database_name == "b"

    zconn.root()["from_zodb"] = Item("z")
    manager.commit()
    data, _ = file_storages["a"].load(zconn.root()["from_zodb"]._p_oid)
    assert record_class(data) is Item
    root_refs = references(file_storages["a"].load(b"\0" * 8)[0])
    assert ("b", target._p_oid) in root_refs
    zconn.close()
    for db in zodb_databases.values():
        db.close()
