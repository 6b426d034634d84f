"""Hostile records: globals a record may not name are refused, nothing runs.

Each crafted record is written straight into the storage's own file or row (as an
attacker who can write the database would), then loaded through the normal API:
every one raises ForbiddenGlobal naming the database, the oid and the global, the
sentinel file its payload would create never appears, and the database stays usable.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import transaction
from persistent import Persistent
from persistent.mapping import PersistentMapping

import atoll
from atoll.errors import ForbiddenGlobal, POSError
from atoll.ids import oid_repr, u64
from atoll.serialize import record_class, references
from atoll.storage import MemoryStorage
from atoll.storage.base import TransactionMeta
from atoll.storage.checksum import checksum
from helpers import Counter, Item, Plain, make_plain

sys.path.insert(0, str(Path(__file__).parent))


class _Reduce:
    """Pickles as ``callable(*args)``: how an attacker writes a REDUCE."""

    def __init__(self, callable_, *args):
        self.callable, self.args = callable_, args

    def __reduce__(self):
        return self.callable, self.args


def _payloads(sentinel: Path) -> dict[str, tuple[object, str]]:
    """name -> (a value whose pickle would create ``sentinel`` if loaded, the global refused)."""
    command = f"touch {sentinel}"
    return {
        "os.system": (_Reduce(os.system, command), "posix.system"),
        "builtins.eval": (_Reduce(eval, f"open({str(sentinel)!r}, 'w')"), "builtins.eval"),
        "subprocess.Popen": (_Reduce(subprocess.Popen, ["touch", str(sentinel)]), "subprocess.Popen"),
        "functools.partial": (functools.partial(os.system, command), "functools.partial"),
        # REDUCEs on allowed callables, with hostile arguments:
        "copyreg._reconstructor of Popen": (
            _Reduce(copyreg._reconstructor, subprocess.Popen, object, ["touch", str(sentinel)]),
            "subprocess.Popen",
        ),
        "defaultdict(os.system)": (_Reduce(collections.defaultdict, os.system), "posix.system"),
        "PersistentMapping(os.system)": (_Reduce(PersistentMapping, {"x": _Reduce(os.system, command)}), "posix.system"),
    }


def _mapping_record(value: object) -> bytes:
    """A PersistentMapping record holding ``value`` (pickled as written, unchecked)."""
    return pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": {"payload": value}}, 3)


def _hostile_class_part(sentinel: Path) -> bytes:
    """A record whose class part itself is a call of os.system."""
    return pickle.dumps(_Reduce(os.system, f"touch {sentinel}"), 3) + pickle.dumps({}, 3)


def _hostile_reference(sentinel: Path, oid: bytes) -> bytes:
    """A record holding a reference whose class is subprocess.Popen."""
    class Ref:
        pass

    buffer = __import__("io").BytesIO()
    pickler = pickle.Pickler(buffer, 3)
    pickler.persistent_id = lambda obj: (oid, subprocess.Popen) if isinstance(obj, Ref) else None
    pickler.dump({"data": {"ref": Ref()}})
    return pickle.dumps(PersistentMapping, 3) + buffer.getvalue()


def _cases(sentinel: Path, victim: bytes) -> list[tuple[str, bytes, str]]:
    cases = [(name, _mapping_record(value), refused) for name, (value, refused) in _payloads(sentinel).items()]
    cases.append(("class part os.system", _hostile_class_part(sentinel), "posix.system"))
    cases.append(("reference class Popen", _hostile_reference(sentinel, victim), "subprocess.Popen"))
    return cases


def _setup(db) -> tuple[bytes, bytes]:
    """A root holding a victim mapping and a healthy item; their oids."""
    with db.transaction() as conn:
        conn.root()["victim"] = victim = PersistentMapping(a=1)
        conn.root()["healthy"] = healthy = Item("fine")
    return victim._p_oid, healthy._p_oid


def _check_refused(db, victim: bytes, healthy: bytes, refused: str, sentinel: Path) -> None:
    conn = db.open()
    try:
        with pytest.raises(ForbiddenGlobal) as info:
            obj = conn.get(victim)
            obj._p_activate()
        error = info.value
        assert error.global_name == refused
        assert error.oid == victim and error.database_name == db.database_name
        assert str(error).startswith(f"forbidden global {refused} (object {oid_repr(victim)} of database {db.database_name!r})")
        assert isinstance(error, POSError)
        assert not sentinel.exists()
        # The database is still usable: other objects load, commits work.
        assert conn.get(healthy).value == "fine"
        conn.root()["after"] = Item("written after")
        transaction.commit()
    finally:
        transaction.abort()
        conn.close()
    with db.transaction() as conn:
        assert conn.root()["after"].value == "written after"
    assert not sentinel.exists()


def _sqlite_overwrite(path: Path, oid: bytes, record: bytes) -> None:
    # Checksums guard against decay, not attackers: they recompute them.
    with sqlite3.connect(path) as raw:
        (tid,) = raw.execute("SELECT max(tid) FROM object_state WHERE zoid = ?", (u64(oid),)).fetchone()
        raw.execute(
            "UPDATE object_state SET state = ?, checksum = ? WHERE zoid = ? AND tid = ?",
            (record, checksum(u64(oid), tid, record), u64(oid), tid),
        )


def test_crafted_sqlite_records_are_refused_and_nothing_runs(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "data.db"
    db = atoll.DB(path)
    victim, healthy = _setup(db)
    db.close()
    for name, record, refused in _cases(sentinel, victim):
        _sqlite_overwrite(path, victim, record)
        db = atoll.DB(path)
        try:
            _check_refused(db, victim, healthy, refused, sentinel)
        finally:
            db.close()
    assert not sentinel.exists()


def test_crafted_postgresql_rows_are_refused_and_nothing_runs(tmp_path):
    from postgres_support import make_storage, postgres_dsn

    import psycopg

    from atoll.storage.postgresql import PostgreSQLStorage

    sentinel = tmp_path / "sentinel"
    storage = make_storage("hostile")
    schema = storage.schema
    db = atoll.DB(storage)
    victim, healthy = _setup(db)
    db.close()
    for name, record, refused in _cases(sentinel, victim):
        with psycopg.connect(postgres_dsn(), autocommit=True) as raw:
            (tid,) = raw.execute(
                f'SELECT max(tid) FROM "{schema}".object_state WHERE zoid = %s', (u64(victim),)
            ).fetchone()
            raw.execute(
                f'UPDATE "{schema}".object_state SET state = %s, checksum = %s WHERE zoid = %s AND tid = %s',
                (record, checksum(u64(victim), tid, record), u64(victim), tid),
            )
        db = atoll.DB(PostgreSQLStorage(postgres_dsn(), schema=schema))
        try:
            _check_refused(db, victim, healthy, refused, sentinel)
        finally:
            db.close()
    assert not sentinel.exists()


def _store_raw(db, oid: bytes, record: bytes) -> None:
    view = db.storage.open_view()
    try:
        view.tpc_begin(TransactionMeta())
        view.store(oid, view.load(oid)[1], record)
        view.tpc_vote()
        view.tpc_finish()
    finally:
        view.release()


def test_refused_records_still_scan_for_references_without_running_anything(tmp_path):
    sentinel = tmp_path / "sentinel"
    for name, record, refused in _cases(sentinel, b"\0" * 7 + b"\1"):
        references(record)  # pack's scan: placeholders, no import, no call
    assert not sentinel.exists()


def test_record_class_refuses_a_hostile_class_part(tmp_path):
    sentinel = tmp_path / "sentinel"
    with pytest.raises(ForbiddenGlobal, match="posix.system"):
        record_class(_hostile_class_part(sentinel))
    assert not sentinel.exists()


def test_conflict_resolution_reads_states_with_the_same_rule(tmp_path):
    # A committed record naming os.system meets a concurrent change of a class that
    # resolves conflicts: the resolver refuses it before running any code.
    sentinel = tmp_path / "sentinel"
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["counter"] = counter = Counter()
    oid = counter._p_oid
    conn = db.open()
    conn.get(oid).value += 1  # read the old revision, change it
    hostile = pickle.dumps(Counter, 3) + pickle.dumps({"value": 5, "x": _Reduce(os.system, f"touch {sentinel}")}, 3)
    _store_raw(db, oid, hostile)
    with pytest.raises(ForbiddenGlobal) as info:
        transaction.commit()
    assert str(info.value).startswith(f"forbidden global posix.system (object {oid_repr(oid)} of database 'unnamed')")
    transaction.abort()
    conn.close()
    assert not sentinel.exists()


def test_conflict_resolution_honours_allowed_globals():
    db = atoll.DB(MemoryStorage(), allowed_globals=["helpers"])
    with db.transaction() as conn:
        conn.root()["counter"] = counter = Counter()
        counter.tag = Plain(1)
    oid = counter._p_oid
    first, second = transaction.TransactionManager(), transaction.TransactionManager()
    a, b = db.open(first), db.open(second)
    a.get(oid).value += 1
    b.get(oid).value += 2
    first.commit()
    second.commit()  # merged: both states name helpers.Plain, which is allowed
    with db.transaction() as conn:
        assert conn.get(oid).value == 3
    a.close()
    b.close()


class NotAllowed:
    """A plain (not persistent) class of the tests, not in allowed_globals."""


def test_writing_a_forbidden_global_fails_at_commit_and_writes_nothing():
    db = atoll.DB(MemoryStorage())
    for value, name in [(NotAllowed(), "test_security.NotAllowed"), (os.system, "posix.system"), (eval, "builtins.eval")]:
        conn = db.open()
        before = db.lastTransaction()
        conn.root()["thing"] = PersistentMapping(value=value)
        with pytest.raises(ForbiddenGlobal) as info:
            transaction.commit()
        assert info.value.global_name == name
        assert info.value.database_name == "unnamed" and info.value.oid is not None
        assert "records may name only persistent classes" in str(info.value)
        transaction.abort()
        assert db.lastTransaction() == before
        conn.close()


def test_allowed_globals_admit_an_applications_plain_classes():
    db = atoll.DB(MemoryStorage(), allowed_globals=["helpers"])
    with db.transaction() as conn:
        conn.root()["p"] = PersistentMapping(value=Plain(7), made=make_plain)
    with db.transaction() as conn:
        assert conn.root()["p"]["value"].n == 7
        assert conn.root()["p"]["made"] is make_plain
    # By exact name too.
    db2 = atoll.DB(MemoryStorage(), allowed_globals=["helpers.Plain"])
    with db2.transaction() as conn:
        conn.root()["p"] = PersistentMapping(value=Plain(8))
    conn = db2.open()
    assert conn.root()["p"]["value"].n == 8
    conn.root()["q"] = PersistentMapping(f=make_plain)
    with pytest.raises(ForbiddenGlobal, match="helpers.make_plain"):
        transaction.commit()
    transaction.abort()
    conn.close()


def test_an_allowed_prefix_does_not_smuggle_in_what_a_module_imported():
    # helpers_reexport (a test module) does `from os import system`: allowing the
    # module does not allow what it merely imported.
    db = atoll.DB(MemoryStorage(), allowed_globals=["test_security"])
    policy = db.class_policy
    with pytest.raises(ForbiddenGlobal, match="test_security.system"):
        policy.resolve(None, "test_security", "system")
    with pytest.raises(ForbiddenGlobal, match="test_security.subprocess"):
        policy.resolve(None, "test_security", "subprocess")  # a module object


system = os.system  # re-exported on purpose: see the test above


def test_standard_data_types_round_trip():
    import datetime
    import decimal
    import fractions
    import uuid

    value = {
        "when": datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 1),
        "span": datetime.timedelta(days=2),
        "price": decimal.Decimal("9.99"),
        "part": fractions.Fraction(1, 3),
        "id": uuid.UUID(int=5),
        "ordered": collections.OrderedDict(a=1),
        "queue": collections.deque([1, 2], maxlen=5),
        "default": collections.defaultdict(list, a=[1]),
        "count": collections.Counter("aab"),
        "set": {1, 2},
        "frozen": frozenset({3}),
        "complex": 1 + 2j,
        "bytes": bytearray(b"xy"),
        "range": range(3),
        "slice": slice(1, 5),
    }
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["v"] = PersistentMapping(value)
    with db.transaction() as conn:
        assert dict(conn.root()["v"]) == value


def test_a_module_not_imported_is_not_imported_unless_allowed(tmp_path, monkeypatch):
    # The record names a class of a module that exists but that nothing imported:
    # importing it would run its code (here: create the sentinel).
    sentinel = tmp_path / "sentinel"
    (tmp_path / "sideeffect_mod.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\n"
        "from persistent import Persistent\n"
        "class Thing(Persistent):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    db = atoll.DB(MemoryStorage())
    with db.transaction() as conn:
        conn.root()["victim"] = victim = PersistentMapping()
    record = b"\x80\x03csideeffect_mod\nThing\nq\x00." + pickle.dumps({}, 3)
    _store_raw(db, victim._p_oid, record)
    conn = db.open()
    with pytest.raises(ForbiddenGlobal, match="its module is not imported") as info:
        conn.get(victim._p_oid)._p_activate()
    assert info.value.global_name == "sideeffect_mod.Thing"
    assert not sentinel.exists() and "sideeffect_mod" not in sys.modules
    conn.close()
    # The application allows it: imported, and the object loads.
    allowed = atoll.DB(db.storage, allowed_globals=["sideeffect_mod"], database_name="again")
    conn = allowed.open()
    assert type(conn.get(victim._p_oid)).__name__ == "Thing"
    assert sentinel.exists()
    conn.close()
    monkeypatch.delitem(sys.modules, "sideeffect_mod")


def test_bad_allowed_globals_and_aliases_are_refused_before_opening_anything(tmp_path):
    path = tmp_path / "never.db"
    with pytest.raises(ValueError, match="allowed_globals"):
        atoll.DB(path, allowed_globals=["ok", ""])
    with pytest.raises(ValueError, match="class_aliases"):
        atoll.DB(path, class_aliases={"old.Name": ""})
    assert not path.exists()




def test_a_hostile_transaction_extension_is_refused(tmp_path):
    # Transaction metadata is written by whoever writes the file too.
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "data.db"
    db = atoll.DB(path)
    with db.transaction(note="hello") as conn:
        conn.root()["x"] = 1
    db.close()
    with sqlite3.connect(path) as raw:
        raw.execute(
            "UPDATE transactions SET extension = ? WHERE tid = (SELECT max(tid) FROM transactions)",
            (pickle.dumps({"x": _Reduce(os.system, f"touch {sentinel}")}, 3),),
        )
    db = atoll.DB(path)
    try:
        with pytest.raises(ForbiddenGlobal, match="posix.system"):
            list(db.storage.iterator())
        assert not sentinel.exists()
        with db.transaction() as conn:  # still usable
            assert conn.root()["x"] == 1
    finally:
        db.close()
