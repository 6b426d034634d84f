"""Connection.exportFile / importFile (atoll.exporting, atoll.exportfile, atoll.relocate)."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef

import atoll
from atoll.errors import ExportError, ForbiddenGlobal, POSKeyError
from atoll.exportfile import MAGIC, ExportReader, ExportWriter
from atoll.exporting import export_file, import_file
from atoll.serialize import class_pickle, references
from atoll.storage import MemoryStorage


@pytest.fixture(params=["memory", "sqlite"])
def make_db(request, tmp_path):
    opened = []

    def make(name: str = "main", databases: dict | None = None) -> atoll.DB:
        if request.param == "memory":
            storage = MemoryStorage()
        else:
            from atoll.storage.sqlite import SQLiteStorage

            storage = SQLiteStorage(tmp_path / f"{name}-{len(opened)}.db")
        db = atoll.DB(storage, database_name=name, databases=databases)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


def graph(conn) -> PersistentMapping:
    """A subgraph with a cycle and a BTree of persistent values, under root['graph']."""
    top = PersistentMapping(name="top")
    child = PersistentMapping(name="child", parent=top)
    top["child"] = child
    top["tree"] = OOBTree()
    for i in range(300):  # enough for several buckets
        top["tree"][i] = PersistentMapping(i=i, top=top)
    conn.root.graph = top
    conn.root.other = PersistentMapping(name="not exported")
    transaction.commit()
    return top


def test_round_trip_keeps_a_cycle_and_a_btree(make_db):
    source, destination = make_db(), make_db()
    conn = source.open()
    top = graph(conn)
    exported = conn.exportFile(top._p_oid)
    count = ExportReader(exported).scan().count
    conn.close()
    target = destination.open()
    copy = target.importFile(exported)
    target.root.copy = copy
    transaction.commit()
    target.close()
    with destination.transaction() as again:
        copy = again.root.copy
        assert copy["name"] == "top"
        assert copy["child"]["parent"] is copy
        assert len(copy["tree"]) == 300 and copy["tree"][299]["i"] == 299
        assert copy["tree"][5]["top"] is copy
        assert "graph" not in again.root() and len(destination) == 1 + count  # the root, and the set


def test_export_stats_and_the_file_format(make_db, tmp_path):
    db = make_db()
    conn = db.open()
    top = graph(conn)
    path = tmp_path / "graph.atollx"
    stats = export_file(conn, top._p_oid, path)
    conn.close()
    assert stats.root == ("main", top._p_oid) and stats.leaving == []
    assert stats.records == stats.per_database["main"] >= 303  # top, child, tree (+ buckets), 300 values
    assert str(stats).startswith(f"exported {stats.records:,} records (main: {stats.records:,})")
    with open(path, "rb") as f:
        assert f.read(len(MAGIC)) == MAGIC
        f.seek(0)
        contents = ExportReader(f, "graph").scan()
    assert contents.root == stats.root and contents.count == stats.records and contents.size == stats.size
    assert contents.records["main"][0] == top._p_oid


def test_import_twice_gives_two_independent_copies(make_db):
    db = make_db()
    conn = db.open()
    top = graph(conn)
    exported = conn.exportFile(top._p_oid)
    first = conn.importFile(exported)
    exported.seek(0)
    second = conn.importFile(exported)
    conn.root.first, conn.root.second = first, second
    transaction.commit()
    oids = [{o._p_oid, o["child"]._p_oid, o["tree"]._p_oid, o["tree"][7]._p_oid} for o in (top, first, second)]
    assert not (oids[0] & oids[1]) and not (oids[0] & oids[2]) and not (oids[1] & oids[2])
    first["child"]["name"] = "changed"
    first["tree"][7]["i"] = -7
    transaction.commit()
    conn.close()
    with db.transaction() as again:
        assert again.root.second["child"]["name"] == "child" and again.root.graph["child"]["name"] == "child"
        assert again.root.second["tree"][7]["i"] == 7 and again.root.first["tree"][7]["i"] == -7


def test_abort_forgets_an_import(make_db):
    db = make_db()
    conn = db.open()
    top = graph(conn)
    count = len(db)
    conn.root.copy = conn.importFile(conn.exportFile(top._p_oid))
    transaction.abort()
    assert len(db) == count and "copy" not in conn.root()
    conn.close()  # nothing left joined to a transaction


def file_variants(good: bytes) -> dict[str, bytes]:
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    return {
        "not an export": b"hello, this is not an export file at all",
        "a zodb export": b"ZEXP" + b"\0" * 40,
        "empty": b"",
        "cut short": good[:-5],
        "damaged": bytes(damaged),
        "a newer version": MAGIC + b"\x00\x09" + good[len(MAGIC) + 2 :],
        # A tiny file claiming a 4 GiB header: refused before anything is read.
        "a huge header": MAGIC + good[len(MAGIC) : len(MAGIC) + 2] + b"\xff\xff\xff\xf0" + b"{}",
    }


@pytest.mark.parametrize(
    "variant", ["not an export", "a zodb export", "empty", "cut short", "damaged", "a newer version", "a huge header"]
)
def test_a_file_that_is_no_good_export_is_refused_in_one_line_and_nothing_written(make_db, variant):
    db = make_db()
    conn = db.open()
    top = graph(conn)
    good = conn.exportFile(top._p_oid).read()
    count, last = len(db), db.lastTransaction()
    with pytest.raises(ExportError) as raised:
        conn.importFile(io.BytesIO(file_variants(good)[variant]))
    assert "\n" not in str(raised.value)
    assert conn._saved is None and not conn._joined
    transaction.commit()
    assert len(db) == count and db.lastTransaction() == last
    conn.close()


def test_export_of_a_missing_object_raises_and_leaves_no_file(make_db, tmp_path):
    db = make_db()
    conn = db.open()
    path = tmp_path / "missing.atollx"
    with pytest.raises(POSKeyError):
        conn.exportFile(b"\0" * 7 + b"\x63", str(path))
    assert not path.exists()
    conn.close()


def two_databases(make_db):
    databases: dict = {}
    return make_db("users", databases), make_db("orders", databases), databases


def test_a_reference_leaving_the_set_is_reported_and_refused_unless_kept(make_db, tmp_path):
    users, orders, _ = two_databases(make_db)
    conn = users.open()
    ada = PersistentMapping(name="Ada")
    conn.add(ada)
    conn.root.ada = ada
    order = PersistentMapping(customer=ada, lines=PersistentMapping(tea=2))
    conn.get_connection("orders").root.first = order
    transaction.commit()
    # Exported with the orders database alone: users is not there to follow into.
    alone = atoll.DB(orders.storage, database_name="orders")
    lone = alone.open(transaction.TransactionManager())
    path = tmp_path / "order.atollx"
    stats = export_file(lone, order._p_oid, path)
    lone.close()
    assert stats.records == 2
    assert stats.leaving == [("orders", order._p_oid, "users", ada._p_oid)]
    assert "1 references leave the set (first: orders 0x" in str(stats)
    orders_conn = conn.get_connection("orders")
    with pytest.raises(ExportError, match=r"has 1 reference to objects outside the exported set \(first: orders 0x") as raised:
        orders_conn.importFile(str(path))
    assert "\n" not in str(raised.value) and orders_conn._saved is None
    # Kept: into the collection that holds users, the reference reaches the same Ada.
    copy = orders_conn.importFile(str(path), leaving="keep")
    orders_conn.root.second = copy
    transaction.commit()
    assert copy is not order and copy["customer"] is ada and copy["lines"] is not order["lines"]
    with pytest.raises(ExportError, match="does not have"):
        make_db("other").open().importFile(str(path), leaving="keep")
    transaction.abort()
    conn.close()


def test_weak_references_inside_follow_and_outside_read_as_gone(make_db):
    db = make_db()
    conn = db.open()
    outside = PersistentMapping(name="outside")
    conn.root.outside = outside
    top = PersistentMapping()
    top["inner"] = PersistentMapping(name="inner")
    top["weak_in"] = WeakRef(top["inner"])
    top["weak_out"] = WeakRef(outside)
    conn.root.top = top
    transaction.commit()
    copy = conn.importFile(conn.exportFile(top._p_oid))
    conn.root.copy = copy
    transaction.commit()
    assert copy["weak_in"]() is copy["inner"] and copy["inner"] is not top["inner"]
    assert copy["weak_out"]() is None and top["weak_out"]() is outside
    conn.close()


class _Runs:
    """Pickles as a call of os.system, as a hostile record would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_importing_runs_nothing_of_a_record_and_loading_refuses_its_globals(make_db, tmp_path):
    marker = tmp_path / "ran"
    state = pickle.dumps({"data": {"x": _Runs(f"touch {marker}")}}, 3)
    record = class_pickle(PersistentMapping) + state
    buffer = io.BytesIO()
    writer = ExportWriter(buffer, "main", b"\0" * 7 + b"\x05")
    writer.record("main", b"\0" * 7 + b"\x05", record)
    writer.finish()
    buffer.seek(0)
    db = make_db()
    conn = db.open()
    hostile = conn.importFile(buffer)
    conn.root.hostile = hostile
    transaction.commit()
    assert not marker.exists()
    hostile._p_invalidate()
    with pytest.raises(ForbiddenGlobal):
        hostile["x"]
    assert not marker.exists()
    conn.close()


def test_import_rewrites_references_only_and_reads_no_class(make_db):
    """The imported records are the exported bytes with new oids: same length,
    same references in number and kind, nothing else changed."""
    db = make_db()
    conn = db.open()
    top = graph(conn)
    buffer = conn.exportFile(top._p_oid)
    originals = {oid: data for _, oid, data in ExportReader(buffer).records()}
    buffer.seek(0)
    root, stats = import_file(conn, buffer)
    conn.root.copy = root
    transaction.commit()
    assert stats.records == len(originals) and stats.root == ("main", root._p_oid)
    data, _ = conn._view.load(root._p_oid)
    before = originals[top._p_oid]
    assert len(data) == len(before) and data != before
    assert [db_name for db_name, _ in references(data)] == [db_name for db_name, _ in references(before)]
    assert {oid for _, oid in references(data)}.isdisjoint(originals)
    conn.close()


def test_a_huge_header_length_is_refused_before_it_is_read():
    class Reads(io.BytesIO):
        asked: list[int] = []

        def read(self, size=-1):
            self.asked.append(size)
            return super().read(size)

    file = Reads(MAGIC + b"\x00\x01\xff\xff\xff\xf0{}")
    with pytest.raises(ExportError, match="damaged header"):
        ExportReader(file)
    assert max(file.asked) < 1 << 20

