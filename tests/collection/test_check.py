"""atoll.collection.check: each kind of damage it names, made on purpose and found."""

from __future__ import annotations

import pickle
import sys
import types

import atoll
import atoll.collection
import pytest
from atoll.ids import p64, u64
from helpers import Item


def write_record(db: atoll.DB, oid: bytes, data: bytes) -> None:
    """Replace ``oid``'s record with ``data`` behind the application's back."""
    view = db.storage.open_view()
    try:
        serial = view.load(oid)[1]
        from atoll.storage.base import TransactionMeta

        view.tpc_begin(TransactionMeta(description="damage"))
        view.store(oid, serial, data)
        view.tpc_vote()
        view.tpc_finish()
    finally:
        view.release()


def item_record(value: object, *refs: tuple[str | None, bytes]) -> bytes:
    """A record of class helpers.Item whose state refers to ``refs``."""
    out = []
    for database, oid in refs:
        out.append(["m", (database, oid, Item)] if database else (oid, Item))
    buf = __import__("io").BytesIO()
    pickler = pickle.Pickler(buf, 3)
    pickler.dump(Item)
    state_pickler = pickle.Pickler(buf, 3)
    ids = iter(out)
    placeholders = [object() for _ in out]
    mapping = {id(p): ref for p, ref in zip(placeholders, ids)}
    state_pickler.persistent_id = lambda obj: mapping.get(id(obj))
    state_pickler.dump({"value": value, "refs": placeholders})
    return buf.getvalue()


def build(collection) -> dict:
    databases = collection.open()
    with databases["a"].transaction() as conn:
        root = conn.root()
        root["x"] = Item("x")
        root["y"] = Item("y")
        root["z"] = Item("z")
        root["w"] = Item("w")
    with databases["a"].transaction() as conn:
        conn.get_connection("b").root()["from_b"] = conn.root()["x"]
    return databases


def oid_of(db: atoll.DB, key: str) -> bytes:
    with db.transaction() as conn:
        return conn.root()[key]._p_oid


def test_a_sound_collection_has_no_problem(collection):
    databases = build(collection)
    lines: list[str] = []
    report = atoll.collection.check(databases, progress=lines.append)
    assert report.ok and report.problems == []
    assert report.objects["a"] == 5 and report.objects["b"] == 1
    assert lines and lines[-1].finished and "0 problem" in lines[-1]


def test_check_finds_each_kind_of_damage(collection):
    databases = build(collection)
    a, b = databases["a"], databases["b"]
    x, y, z, w = (oid_of(a, key) for key in "xyzw")
    missing_here, missing_there = p64(10_000_000), p64(20_000_000)
    # dangling inside a database, and across databases
    write_record(a, x, item_record("x", (None, missing_here), ("b", missing_there)))
    # a record that cannot be read
    write_record(a, y, b"\x80\x03garbage that is no pickle")
    # a class that cannot be imported
    module = types.ModuleType("atoll_test_vanishing_module")

    class Gone(Item):
        pass

    Gone.__module__, Gone.__qualname__ = module.__name__, "Gone"
    module.Gone = Gone
    sys.modules[module.__name__] = module
    try:
        with a.transaction() as conn:
            conn.root()["gone"] = Gone("soon missing")
    finally:
        del sys.modules[module.__name__]
    # a reference to a database outside the collection
    write_record(a, z, item_record("z", ("elsewhere", p64(1))))

    report = atoll.collection.check(databases)
    assert not report.ok
    found = {(p.database, p.kind, u64(p.oid)) for p in report.problems}
    gone_oid = oid_of_class(a, "gone")
    assert ("a", "dangling", 10_000_000) in found
    assert ("b", "dangling", 20_000_000) in found
    assert ("a", "unreadable", u64(y)) in found
    assert ("a", "missing-class", gone_oid) in found
    assert ("a", "unknown-database", u64(z)) in found
    assert len(report.problems) == 5
    dangling = next(p for p in report.problems if p.database == "b")
    assert [(db, u64(oid)) for db, oid in dangling.path] == [("a", 0), ("a", u64(x)), ("b", 20_000_000)]
    assert "atoll_test_vanishing_module" in str(report)


def oid_of_class(db: atoll.DB, key: str) -> int:
    view = db.storage.open_view()
    try:
        from atoll.serialize import references

        root = view.load(p64(0))[0]
        # the root maps key -> reference; find the one whose record names the gone module
        for _, oid in references(root):
            if b"atoll_test_vanishing_module" in view.load(oid)[0]:
                return u64(oid)
    finally:
        view.release()
    raise AssertionError("no such object")


def test_check_reports_a_record_whose_checksum_fails(tmp_path):
    import sqlite3

    from atoll.storage.sqlite import SQLiteStorage

    path = tmp_path / "a.db"
    databases: dict = {}
    db = atoll.DB(SQLiteStorage(path), database_name="a", databases=databases)
    with db.transaction() as conn:
        conn.root()["x"] = Item("intact")
    x = oid_of(db, "x")
    raw = sqlite3.connect(path)
    (state,) = raw.execute("SELECT state FROM object_state WHERE zoid = ?", (u64(x),)).fetchone()
    raw.execute("UPDATE object_state SET state = ? WHERE zoid = ?", (state.replace(b"intact", b"broken"), u64(x)))
    raw.commit()
    raw.close()
    report = atoll.collection.check(databases)
    assert [(p.database, p.kind, p.oid) for p in report.problems] == [("a", "damaged", x)]
    assert "checksum" in report.problems[0].detail
    with pytest.raises(Exception, match="checksum"):
        atoll.collection.pack(databases)  # a damaged record stops a pack: it could hide references
    db.close()
