"""Record format: two pickles, ZODB's reference forms, reference scanning."""

from __future__ import annotations

import gc
import io
import pickle
import sys
import types
import weakref

import transaction
from persistent import Persistent
from persistent.mapping import PersistentMapping

import atoll
from atoll.ids import p64
from atoll.serialize import (
    PersistentReference,
    dump_state,
    foreign_references,
    record_class,
    record_state,
    referenced_oids,
    references,
)
from atoll.storage import MemoryStorage
from helpers import Item, WithArgs


def _persistent_ids(record: bytes) -> tuple[object, list]:
    """The class pickle and every persistent id of a record, read with plain pickle."""
    found: list = []
    unpickler = pickle.Unpickler(io.BytesIO(record))
    unpickler.persistent_load = lambda ref: found.append(ref) or None
    meta = unpickler.load()
    unpickler.load()
    return meta, found


def _record(db, oid: bytes) -> bytes:
    view = db.storage.open_view()
    try:
        return view.load(oid)[0]
    finally:
        view.release()


def test_record_is_class_then_state_with_oid_class_references():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["item"] = item = Item("v")
    meta, refs = _persistent_ids(_record(db, p64(0)))
    assert meta is PersistentMapping
    assert refs == [(item._p_oid, Item)]
    meta, refs = _persistent_ids(_record(db, item._p_oid))
    assert meta is Item and refs == []


def test_class_with_getnewargs_is_written_with_its_args_and_referenced_by_oid():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["k"] = obj = WithArgs("key")
    meta, _ = _persistent_ids(_record(db, obj._p_oid))
    assert meta == (WithArgs, ("key",))
    _, refs = _persistent_ids(_record(db, p64(0)))
    assert refs == [obj._p_oid]


def test_cross_database_reference_form():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    conn = first.open()
    conn.get_connection("second").root()["t"] = target = Item(1)
    transaction.commit()
    conn.root()["t"] = target
    transaction.commit()
    _, refs = _persistent_ids(_record(first, p64(0)))
    assert refs == [["m", ("second", target._p_oid, Item)]]


def test_references_scan_needs_no_importable_class():
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, 3)
    pickler.persistent_id = lambda obj: obj.ref if isinstance(obj, PersistentReference) else None
    pickler.dump(("nowhere.module", "Missing"))
    pickler.dump({"a": PersistentReference((p64(5), None)), "b": PersistentReference(["m", ("db2", p64(7), None)])})
    record = buf.getvalue()
    assert sorted(references(record), key=repr) == sorted([(None, p64(5)), ("db2", p64(7))], key=repr)
    assert list(referenced_oids(record)) == [p64(5)]


def test_references_of_a_record_with_an_unknown_global():
    # A class pickled as a global that no longer exists must not stop the scan.
    class Gone:
        pass

    Gone.__module__, Gone.__qualname__ = "atoll_tests_missing", "Gone"
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, 3)
    pickler.persistent_id = lambda obj: (p64(9), None) if obj == "ref" else None
    pickler.dump(PersistentMapping)
    pickler.dump({"data": {"x": "ref"}})
    assert list(referenced_oids(buf.getvalue())) == [p64(9)]


def test_record_state_and_dump_state_round_trip_references():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["item"] = Item("v")
    record = _record(db, p64(0))
    offset, state = record_state(record)
    assert record_class(record) is PersistentMapping
    assert record_state(record[:offset] + dump_state(state))[1] == state
    (ref,) = state["data"].values()
    assert isinstance(ref, PersistentReference) and ref == PersistentReference((ref.key[1], None))


def test_fresh_pickler_per_record_gives_identical_bytes_for_identical_objects():
    # A pickler reused across records would memoize the class and write a
    # back-reference the second time; each record must stand alone.
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["a"] = a = Item("same")
        conn.root()["b"] = b = Item("same")
    assert _record(db, a._p_oid) == _record(db, b._p_oid)
    assert pickle.loads(_record(db, a._p_oid)) is Item


def test_a_state_that_refers_to_the_class_part_is_read_as_zodb_writes_it():
    # ZODB pickles both parts with one pickler: the state may reuse the class
    # part's memo. Such a record must read the same as one atoll writes.
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, 3)
    pickler.dump(Item)
    pickler.dump({"value": Item})
    record = buf.getvalue()
    assert b"h\x00" in record  # BINGET 0: the state refers to the class part's memo
    db = atoll.DB(MemoryStorage())
    conn = db.open()
    obj = conn._reader.ghost_from_record(record)
    conn._reader.set_state(obj, record)
    assert obj.value is Item


class KeyedByPersistent(Persistent):
    """A class whose state is a dict keyed by persistent objects (custom getstate)."""

    def __init__(self, key: Persistent | None = None) -> None:
        self.key = key

    def __getstate__(self) -> dict:
        return {self.key: 1}

    def __setstate__(self, state: dict) -> None:
        (self.key,) = state


def test_flat_states_are_written_as_the_general_path_writes_them():
    # States of strings and numbers skip persistent_id; the bytes must not change.
    db = atoll.DB(MemoryStorage())
    conn = db.open()
    writer = conn._writer
    for state in ({"value": 1}, {"value": "x" * 200, "n": 2.5, "b": b"\x00", "t": True, "none": None}):
        obj = Item()
        obj.__setstate__(state)
        conn.add(obj)
        general = io.BytesIO()
        pickler = pickle.Pickler(general, 3)
        pickler.persistent_id = writer._persistent_id
        pickler.dump(state)
        assert writer.serialize(obj) == pickle.dumps(Item, 3) + general.getvalue()


def test_a_persistent_key_in_a_state_dict_is_written_as_a_reference():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        target = Item("target")
        conn.root()["x"] = holder = KeyedByPersistent(target)
    _, refs = _persistent_ids(_record(db, holder._p_oid))
    assert refs == [(target._p_oid, Item)]
    conn2 = db.open()
    assert conn2.root()["x"].key.value == "target"


def test_the_writer_keeps_no_object_alive_after_a_commit():
    # A pickler's memo holds every object it wrote until cleared: a mapping's
    # record must not keep its values alive once written.
    db = atoll.DB(MemoryStorage())
    conn = db.open()
    root = conn.root()
    root["m"] = PersistentMapping({"a": Item("a")})
    transaction.commit()
    probe = weakref.ref(root["m"]["a"])
    conn.cacheMinimize()
    gc.collect()
    assert probe() is None


class Slotted(Persistent):
    __slots__ = ("slot", "__dict__")


def _general_record(writer, obj: Persistent) -> bytes:
    """The record the general path (``__getstate__`` and persistent_id) writes."""
    general = io.BytesIO()
    pickler = pickle.Pickler(general, 3)
    pickler.persistent_id = writer._persistent_id
    pickler.dump(obj.__getstate__())
    return pickle.dumps(type(obj), 3) + general.getvalue()


def test_an_objects_dict_is_written_as_its_getstate_would_be():
    # Plain objects pickle their __dict__ itself; anything __getstate__ leaves out or
    # turns into a reference must send the object down the general path.
    db = atoll.DB(MemoryStorage())
    conn = db.open()
    writer = conn._writer
    target = Item("target")
    conn.add(target)
    plain = Item("plain")
    volatile = Item("volatile")
    volatile._v_cached = "not stored"
    private = Item("private")
    private.__dict__["_p_private"] = 1
    keyed = Item("keyed")
    keyed.__dict__[target] = 1  # a persistent key: must become a reference
    referring = Item(target)
    for obj in (plain, volatile, private, keyed, referring):
        conn.add(obj)
        assert writer.serialize(obj) == _general_record(writer, obj)
    assert b"not stored" not in writer.serialize(volatile)
    assert b"_p_private" not in writer.serialize(private)
    _, refs = _persistent_ids(writer.serialize(keyed))
    assert refs == [(target._p_oid, Item)]
    _, refs = _persistent_ids(writer.serialize(referring))
    assert refs == [(target._p_oid, Item)]


def test_slots_are_part_of_the_record():
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        obj = Slotted()
        obj.slot = "in a slot"
        obj.attribute = "in the dict"
        conn.root()["s"] = obj
    conn2 = db.open()
    conn2.cacheMinimize()  # read the record back, not the object in memory
    loaded = conn2.root()["s"]
    assert (loaded.slot, loaded.attribute) == ("in a slot", "in the dict")
    conn2.close()


def _two_databases():
    databases: dict = {}
    first = atoll.DB(MemoryStorage(), database_name="first", databases=databases)
    atoll.DB(MemoryStorage(), database_name="second", databases=databases)
    conn = first.open()
    return first, conn, conn.get_connection("second")


def test_foreign_references_finds_a_records_one_cross_database_reference():
    first, conn, second = _two_databases()
    targets = [Item(i) for i in range(3)]
    for target in targets:
        second.add(target)
    local = Item("local")
    conn.root()["one"] = one = Item(targets[0])
    conn.root()["mixed"] = mixed = Item({"far": targets[1], "near": local, "text": "m" * 300})
    conn.root()["none"] = none = Item(local)
    # Over 256 memo entries before the reference: its memo puts take 4-byte indices.
    conn.root()["long"] = long = Item([str(i) for i in range(300)] + [targets[2]])
    conn.root()["two"] = two = Item([targets[0], targets[1]])
    transaction.commit()
    for obj in (one, mixed, none, long):
        data = _record(first, obj._p_oid)
        expected = [(name, oid) for name, oid in references(data) if name is not None]
        assert foreign_references(data) == expected
    assert foreign_references(_record(first, one._p_oid)) == [("second", targets[0]._p_oid)]
    assert b"X\x01\x00\x00\x00mr" in _record(first, long._p_oid)  # LONG_BINPUT after "m"
    # A second reference to another database: the quick scan declines, the full one reads it.
    data = _record(first, two._p_oid)
    assert foreign_references(data) is None
    assert [r for r in references(data) if r[0]] == [("second", targets[0]._p_oid), ("second", targets[1]._p_oid)]


def test_foreign_references_declines_bytes_it_does_not_recognize():
    for data in (b"X\x01\x00\x00\x00m", b"X\x01\x00\x00\x00mq\x01", b"X\x01\x00\x00\x00mq\x01Z", b"X\x01\x00\x00\x00mq\x01X\x06\x00\x00\x00secondq\x02C\x04abcd"):
        assert foreign_references(data) is None
    assert foreign_references(b"\x80\x03}q\x00.") == []


def test_the_attribute_names_cache_stays_bounded():
    import atoll.serialize as serialize

    db = atoll.DB(MemoryStorage())
    conn = db.open()
    writer = conn._writer
    serialize._plain_keys.clear()
    wide = Item("wide")
    for i in range(serialize._PLAIN_KEYS_LONGEST + 1):
        setattr(wide, f"field_{i}", i)
    conn.add(wide)
    assert writer.serialize(wide) == _general_record(writer, wide)
    assert not serialize._plain_keys  # too many names to keep as a cache key
    for i in range(serialize._PLAIN_KEYS_LIMIT + 5):
        obj = Item(i)
        setattr(obj, f"only_{i}", i)
        conn.add(obj)
        writer.serialize(obj)
    assert len(serialize._plain_keys) <= serialize._PLAIN_KEYS_LIMIT


class _SpyModule(types.ModuleType):
    """A module that records the name objects it is asked for."""

    def __getattribute__(self, name):
        if not name.startswith("__"):
            object.__getattribute__(self, "asked").append(name)
        return super().__getattribute__(name)


class Thing(Persistent):
    pass


def test_globals_of_a_record_are_looked_up_by_interned_names(monkeypatch):
    # A fresh name string looked up on a module stays alive in CPython's type cache;
    # thousands of them used to pin the memory of objects loaded meanwhile.
    module = _SpyModule("atoll_test_spy")
    module.asked = []
    module.Thing = Thing
    monkeypatch.setitem(sys.modules, "atoll_test_spy", module)
    monkeypatch.setattr(Thing, "__module__", "atoll_test_spy")
    db = atoll.open()
    conn = db.open()
    conn.root.things = PersistentMapping({i: Thing() for i in range(3)})
    transaction.commit()
    conn.cacheMinimize()
    assert len(conn.root.things) == 3  # loads the mapping: its state names Thing
    assert "Thing" in module.asked
    assert all(name is sys.intern(name) for name in module.asked)
    conn.close()
    db.close()
