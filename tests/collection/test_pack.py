"""atoll.collection.pack: garbage collection across databases, on every storage."""

from __future__ import annotations

import pytest
import transaction

import atoll
import atoll.collection
from atoll.collection import membership
from atoll.errors import POSKeyError
from atoll.ids import ROOT_OID
from helpers import Item


def exists(db: atoll.DB, oid: bytes) -> bool:
    view = db.storage.open_view()
    try:
        view.load(oid)
        return True
    except POSKeyError:
        return False
    finally:
        view.release()


def build(databases: dict) -> tuple[dict, dict]:
    """Three databases with references in every direction, cycles across them,
    objects reachable only from another database, and garbage in each. Returns
    (live, dead): name -> list of oids."""
    live: dict[str, list] = {name: [] for name in databases}
    dead: dict[str, list] = {name: [] for name in databases}
    conn = databases["a"].open()
    ca, cb, cc = conn, conn.get_connection("b"), conn.get_connection("c")
    ra, rb, rc = ca.root(), cb.root(), cc.root()

    def new(c, value):
        obj = Item(value)
        c.add(obj)
        return obj

    # a -> b -> c -> a, each target reachable only through the other database.
    b1, c1, a1 = new(cb, "b1"), new(cc, "c1"), new(ca, "a1")
    ra["to_b"], rb["to_c"], rc["to_a"] = b1, c1, a1
    # Only reachable from another database, two hops away: c.root -> a1 -> b4 -> c4.
    b4, c4 = new(cb, "b4"), new(cc, "c4")
    a1.value, b4.value = b4, c4
    # A reachable cycle across databases: a.root -> a3 <-> b3.
    a3, b3 = new(ca, "a3"), new(cb, "b3")
    a3.value, b3.value = b3, a3
    ra["cycle"] = a3
    # Garbage: a cycle across databases no root reaches, and an object in each.
    a2, b2 = new(ca, "a2"), new(cb, "b2")
    a2.value, b2.value = b2, a2
    ga, gb, gc = new(ca, "ga"), new(cb, "gb"), new(cc, "gc")
    ra["ga"], rb["gb"], rc["gc"] = ga, gb, gc
    transaction.commit()
    del ra["ga"], rb["gb"], rc["gc"]
    transaction.commit()
    for obj, name in [(b1, "b"), (c1, "c"), (a1, "a"), (b4, "b"), (c4, "c"), (a3, "a"), (b3, "b")]:
        live[name].append(obj._p_oid)
    for obj, name in [(a2, "a"), (b2, "b"), (ga, "a"), (gb, "b"), (gc, "c")]:
        dead[name].append(obj._p_oid)
    conn.close()
    return live, dead


def test_pack_removes_exactly_what_no_root_reaches(collection):
    databases = collection.open()
    live, dead = build(databases)
    lines: list[str] = []
    stats = atoll.collection.pack(databases, progress=lines.append)
    assert set(stats) == {"a", "b", "c"}
    assert {name: s.objects_removed for name, s in stats.items()} == {"a": 2, "b": 2, "c": 1}
    assert any(getattr(line, "phase", None) == "marking" for line in lines)
    assert "removed" in lines[-1]
    for name, oids in live.items():
        for oid in oids + [ROOT_OID]:
            assert exists(databases[name], oid), (name, oid)
    for name, oids in dead.items():
        for oid in oids:
            assert not exists(databases[name], oid), (name, oid)
    with databases["c"].transaction() as conn:  # every reachable object loads, across databases
        a1 = conn.root()["to_a"]
        assert a1.value.value.value == "c4"
        cycle = conn.get_connection("a").root()["cycle"]
        assert cycle.value.value is cycle and cycle.value._p_jar.db().database_name == "b"


def test_a_second_pack_removes_nothing_more(collection):
    databases = collection.open()
    build(databases)
    atoll.collection.pack(databases)
    stats = atoll.collection.pack(databases)
    assert sum(s.objects_removed for s in stats.values()) == 0


def test_members_remember_their_collection(collection):
    databases = collection.open()
    build(databases)
    for name, db in databases.items():
        known = membership.read(db.storage)
        assert known.name == name
        assert known.others == set(databases) - {name}
    collection.close(databases)
    alone = collection.open(("b",))
    assert alone["b"].collection_members() == {"a", "c"}


def test_packing_a_member_alone_never_breaks_a_reference(collection):
    databases = collection.open()
    live, dead = build(databases)
    collection.close(databases)
    for name in ("a", "b", "c"):
        alone = collection.open((name,))
        lines: list[str] = []
        stats = alone[name].pack(progress=lines.append)
        assert stats.objects_removed == 0
        assert "old revisions only" in lines[0] and "atoll.collection.pack" in lines[0]
        with pytest.raises(ValueError, match="not among the databases given"):
            atoll.collection.pack(alone)
        collection.close(alone)
    databases = collection.open()
    for name, oids in live.items():
        for oid in oids:
            assert exists(databases[name], oid)
    with databases["a"].transaction() as conn:
        assert conn.root()["to_b"].value == "b1"


def test_a_member_opened_under_another_name_is_refused(collection):
    databases = collection.open()
    build(databases)
    renamed = {"x": databases["a"], "b": databases["b"], "c": databases["c"]}
    with pytest.raises(ValueError, match="named 'a' in its collection"):
        atoll.collection.pack(renamed)


def test_objects_linked_after_the_pack_time_stay(collection):
    databases = collection.open()
    with databases["a"].transaction() as conn:
        conn.root()["x"] = orphan = Item("orphan")
        conn.get_connection("b").root()["y"] = Item("y")
    with databases["a"].transaction() as conn:
        del conn.root()["x"]
    import time

    pack_time = time.time()
    time.sleep(0.01)
    with databases["b"].transaction() as conn:  # b links a's orphan after the pack time
        conn.root()["y"].value = conn.get_connection("a").get(orphan._p_oid)
    atoll.collection.pack(databases, t=pack_time)
    assert exists(databases["a"], orphan._p_oid)
    with databases["b"].transaction() as conn:
        assert conn.root()["y"].value.value == "orphan"


def test_pack_reads_no_application_class(collection, monkeypatch):
    import sys
    import types

    module = types.ModuleType("atoll_test_pack_never_imports")

    class Elsewhere(Item):
        pass

    Elsewhere.__module__, Elsewhere.__qualname__ = module.__name__, "Elsewhere"
    module.Elsewhere = Elsewhere
    sys.modules[module.__name__] = module
    databases = collection.open()
    try:
        with databases["a"].transaction() as conn:
            conn.root()["kept"] = Elsewhere(Elsewhere("inner"))
            conn.root()["dropped"] = Elsewhere("garbage")
        with databases["a"].transaction() as conn:
            del conn.root()["dropped"]
    finally:
        del sys.modules[module.__name__]

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == module.__name__:
                raise AssertionError("pack imported an application module")
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    stats = atoll.collection.pack(databases)
    assert stats["a"].objects_removed == 1
    assert module.__name__ not in sys.modules


def test_bad_arguments_are_refused():
    databases = {"a": atoll.DB(database_name="a")}
    with pytest.raises(ValueError, match="days"):
        atoll.collection.pack(databases, days=-1)
    with pytest.raises(TypeError, match="POSIX"):
        atoll.collection.pack(databases, t="now")
    with pytest.raises(ValueError, match="no databases"):
        atoll.collection.pack({})
