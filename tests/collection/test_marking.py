"""atoll.collection.marking: the mark set and the fast reference scan."""

from __future__ import annotations

import random

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.collection.marking import MarkSet, scan_references
from atoll.ids import p64
from atoll.serialize import FOREIGN_MARKS, references
from helpers import Item, WithArgs


def test_mark_set_is_a_set_of_integers():
    marks = MarkSet()
    rng = random.Random(7)
    numbers = {rng.randrange(1 << 40) for _ in range(2000)} | set(range(5000))
    for n in numbers:
        assert marks.add(n)
    assert not marks.add(0)
    assert len(marks) == len(numbers)
    assert all(n in marks for n in numbers)
    assert not any(n in marks for n in (5000, 5001, (1 << 40) + 1) if n not in numbers)
    assert sorted(marks) == sorted(numbers)
    assert "x" not in marks


def test_mark_set_is_compact_for_dense_oids():
    marks = MarkSet(range(1_000_000))
    assert marks.nbytes() <= 1_000_000 // 8 + 8192


def records_of(databases: dict) -> list[bytes]:
    found = []
    for db in databases.values():
        for txn in db.storage.iterator():
            found.extend(record.data for record in txn if record.data)
    return found


def test_the_scan_finds_every_reference_and_the_right_database():
    databases: dict = {}
    a = atoll.DB(database_name="a", databases=databases)
    atoll.DB(database_name="b", databases=databases)
    conn = a.open()
    b = conn.get_connection("b")
    root = conn.root()
    root["many"] = PersistentMapping({i: Item(i) for i in range(300)})  # thousands of oids: every byte value
    root["tree"] = tree = OOBTree()
    for i in range(500):
        tree[i] = Item(b"C\x08" * (i % 5))  # payload bytes that look like the opcode
    root["same twice"] = Item([root["many"][1], root["many"][1]])  # a memo reference the second time
    root["args"] = WithArgs("k")
    far = Item("far")
    b.add(far)
    root["to b"] = Item([far, root["many"][2]])
    named = Item("m")  # the string "m" first, the reference's "m" then a memo get
    named.m = far
    root["named"] = named
    transaction.commit()
    b.root()["to a"] = Item(root["many"][3])
    transaction.commit()
    conn.close()
    for record in records_of(databases):
        full = references(record)
        fast = scan_references(record)
        if any(name is not None for name, _ in full):
            assert fast == full  # another database: read in full
        else:
            assert set(full) <= set(fast)
    assert any(mark in record for record in records_of(databases) for mark in FOREIGN_MARKS)


def test_records_without_lists_take_the_fast_way(monkeypatch):
    import atoll.collection.marking as marking

    def no_unpickling(record):
        raise AssertionError("read in full")

    monkeypatch.setattr(marking, "record_references", no_unpickling)
    databases: dict = {}
    a = atoll.DB(database_name="a", databases=databases)
    with a.transaction() as conn:
        conn.root()["tree"] = tree = OOBTree()
        for i in range(100):
            item = Item(i)
            item.n, item.m = "n", "m"  # one-letter strings alone do not look like a reference
            tree[i] = item
    for record in records_of(databases):
        scan_references(record)


def test_the_scan_reads_old_style_pickles_in_full():
    import pickle

    record = pickle.dumps(Item, 1) + pickle.dumps({"x": 1}, 1)
    assert scan_references(record) == references(record) == []
    assert scan_references(pickle.dumps(Item, 3) + b"\x80\x03C\x08" + p64(5) + b"Q.") == [(None, p64(5))]
