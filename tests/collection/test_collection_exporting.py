"""Export and import across the databases of a collection (atoll.collection.exporting),
on every kind of storage of the collection fixture."""

from __future__ import annotations

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection.exporting import export_objects, import_objects
from atoll.errors import ExportError
from atoll.storage import MemoryStorage


def fill(databases) -> tuple[bytes, bytes]:
    """a:root['order'] -> b:customer -> a:order (a cycle across databases), and a
    BTree in b; returns the oids of the order (in a) and the customer (in b)."""
    manager = transaction.TransactionManager()
    conn = databases["a"].open(manager)
    b = conn.get_connection("b")
    order = PersistentMapping(number=1)
    customer = PersistentMapping(name="Ada", orders=OOBTree())
    conn.add(order)
    b.add(customer)
    order["customer"] = customer
    customer["orders"][1] = order
    for i in range(200):
        customer["orders"][i + 2] = PersistentMapping(number=i + 2)
    conn.root()["order"] = order
    b.root()["ada"] = customer
    manager.commit()
    oids = order._p_oid, customer._p_oid
    conn.close()
    return oids


def check_copy(conn, order) -> None:
    customer = order["customer"]
    assert customer._p_jar.db().database_name == "b" and order._p_jar.db().database_name == "a"
    assert customer["orders"][1] is order and customer["name"] == "Ada"
    assert len(customer["orders"]) == 201 and customer["orders"][201]["number"] == 201


def test_cross_database_references_inside_the_set_are_kept(collection, tmp_path):
    databases = collection.open()
    order_oid, customer_oid = fill(databases)
    path = tmp_path / "order.atollx"
    stats = export_objects(databases, order_oid, path, database="a")
    assert stats.leaving == [] and set(stats.per_database) == {"a", "b"}
    assert stats.per_database["a"] == 1 and stats.per_database["b"] >= 202
    # Into the same collection, under another key: a second, independent copy.
    imported = import_objects(databases, path, "copy")
    assert imported.root[0] == "a" and imported.root[1] != order_oid
    assert imported.per_database == stats.per_database
    with databases["a"].transaction() as conn:
        copy = conn.root()["copy"]
        check_copy(conn, copy)
        assert copy is not conn.root()["order"] and copy["customer"]._p_oid != customer_oid
        copy["customer"]["name"] = "changed"
    with databases["a"].transaction() as conn:
        assert conn.root()["order"]["customer"]["name"] == "Ada"
    collection.close(databases)
    # Reopened: everything was committed.
    again = collection.open()
    with again["a"].transaction() as conn:
        assert conn.root()["copy"]["customer"]["name"] == "changed"
    collection.close(again)


def test_into_another_collection_of_the_same_names(collection, tmp_path):
    databases = collection.open()
    order_oid, _ = fill(databases)
    path = tmp_path / "order.atollx"
    export_objects(databases["a"], order_oid, path, database="a")
    collection.close(databases)
    other: dict = {}
    for name in ("a", "b"):
        atoll.DB(MemoryStorage(), database_name=name, databases=other)
    import_objects(other, path, "order")
    with other["a"].transaction() as conn:
        check_copy(conn, conn.root()["order"])
    for db in other.values():
        db.close()
    lone = atoll.DB(MemoryStorage(), database_name="a")
    with pytest.raises(ExportError, match="has no database 'b'"):
        import_objects(lone, path, "again")
    assert len(lone) == 1
    lone.close()


def test_a_taken_key_is_refused_and_nothing_written(collection, tmp_path):
    databases = collection.open()
    order_oid, _ = fill(databases)
    path = tmp_path / "order.atollx"
    export_objects(databases, order_oid, path, database="a")
    counts = {name: len(db) for name, db in databases.items()}
    with pytest.raises(ValueError, match="already has a key 'order'"):
        import_objects(databases, path, "order")
    assert {name: len(db) for name, db in databases.items()} == counts
    collection.close(databases)


def test_an_object_is_exported_through_its_connection(collection, tmp_path):
    databases = collection.open()
    fill(databases)
    with databases["b"].transaction() as conn:
        stats = export_objects(conn, conn.root()["ada"], tmp_path / "ada.atollx")
    assert stats.root[0] == "b" and set(stats.per_database) == {"a", "b"}
    collection.close(databases)


def test_a_weak_reference_to_another_database_outside_the_set_reads_as_gone(collection, tmp_path):
    from persistent.wref import WeakRef

    databases = collection.open()
    with databases["a"].transaction() as conn:
        b = conn.get_connection("b")
        target = PersistentMapping(name="in b, not exported")
        b.add(target)
        b.root()["target"] = target
        holder = PersistentMapping(weak=WeakRef(target))
        conn.root()["holder"] = holder
    with databases["a"].transaction() as conn:
        holder_oid = conn.root()["holder"]._p_oid
    path = tmp_path / "holder.atollx"
    stats = export_objects(databases, holder_oid, path, database="a")
    assert set(stats.per_database) == {"a"}  # weak references are not followed
    import_objects(databases, path, "copy")
    with databases["a"].transaction() as conn:
        assert conn.root()["copy"]["weak"]() is None  # not the target, nor anything else
        assert conn.root()["holder"]["weak"]()["name"] == "in b, not exported"
