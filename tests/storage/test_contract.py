"""The storage contract: what every backend of :mod:`atoll.storage.base` guarantees.

One suite, run by the ``storage`` fixture against every backend (see conftest.py).
Records are opaque to storages; here a record is a pickle of ``(payload, refs)`` so
that pack's garbage collector can be handed a ``references`` callable.
"""

from __future__ import annotations

import pickle
import re
import threading

import pytest

from atoll.errors import (
    ConflictError,
    POSKeyError,
    ReadConflictError,
    ReadOnlyError,
    StorageError,
    StorageTransactionError,
)
from atoll.ids import ROOT_OID, p64, u64, z64
from atoll.collection.marking import pack_storage
from atoll.storage.base import PackStats, Storage, StorageView, TransactionMeta
from storage_helpers import commit


def record(payload: object, *refs: bytes) -> bytes:
    return pickle.dumps((payload, list(refs)))


def payload(data: bytes) -> object:
    return pickle.loads(data)[0]


def references(data: bytes) -> list[tuple[None, bytes]]:
    return [(None, oid) for oid in pickle.loads(data)[1]]


def create_root(storage: Storage, *refs: bytes) -> bytes:
    view = storage.open_view()
    try:
        return commit(view, {ROOT_OID: (z64, record("root", *refs))})
    finally:
        view.release()


# -- basics ------------------------------------------------------------------------------


def test_implements_the_protocol(storage):
    assert isinstance(storage, Storage)
    view = storage.open_view()
    assert isinstance(view, StorageView)
    assert isinstance(storage.name, str) and isinstance(storage.sort_key(), str)
    assert storage.read_only is False
    view.release()


def test_empty_storage(storage):
    view = storage.open_view()
    assert storage.last_transaction() == z64
    assert view.snapshot == z64
    assert len(storage) == 0
    with pytest.raises(POSKeyError):
        view.load(ROOT_OID)
    assert view.load_many([ROOT_OID]) == {}
    assert view.poll() == set()
    with pytest.raises(POSKeyError):
        storage.history(ROOT_OID)
    assert list(storage.iterator()) == []


def test_store_load_and_metadata(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    meta = TransactionMeta(user="ada", description="first", extension={"k": [1, 2]})
    tid = commit(view, {ROOT_OID: (z64, record("root", oid)), oid: (z64, record("one"))}, meta)
    assert storage.last_transaction() == tid
    assert view.snapshot < tid  # tpc_finish does not move the snapshot
    assert view.poll() == set()  # own commit left out
    assert view.snapshot == tid
    assert view.load(oid) == (record("one"), tid)
    assert view.load_serial(oid, tid) == record("one")
    assert len(storage) == 2
    [txn] = list(storage.iterator())
    assert (txn.tid, txn.user, txn.description, txn.extension) == (tid, "ada", "first", {"k": [1, 2]})
    assert sorted((r.oid, r.tid, r.data) for r in txn) == [
        (ROOT_OID, tid, record("root", oid)),
        (oid, tid, record("one")),
    ]
    [entry] = storage.history(oid, size=10)
    assert (entry.tid, entry.user_name, entry.description, entry.size) == (tid, "ada", "first", len(record("one")))
    assert storage.get_size() > 0


def test_store_many_queues_records_as_store_does(storage):
    view = storage.open_view()
    a, b = storage.new_oid(), storage.new_oid()
    first = commit(view, {a: (z64, b"a1")})
    view.poll()
    with pytest.raises(StorageTransactionError):
        view.store_many({b: (z64, b"b1")})  # outside a commit
    view.tpc_begin(TransactionMeta())
    view.store_many({a: (first, b"a2"), b: (z64, b"b1")})
    view.tpc_vote()
    second = view.tpc_finish()
    view.poll()
    assert view.load_many([a, b]) == {a: (b"a2", second), b: (b"b1", second)}
    other = storage.open_view()
    commit(other, {a: (second, b"a3")})
    view.tpc_begin(TransactionMeta())
    view.store_many({a: (second, b"stale")})  # no longer the current revision
    with pytest.raises(ConflictError):
        view.tpc_vote()
    view.tpc_abort()
    view.release()
    other.release()


def test_load_many_skips_missing(storage):
    view = storage.open_view()
    a, b, missing = storage.new_oid(), storage.new_oid(), storage.new_oid()
    tid = commit(view, {a: (z64, b"a"), b: (z64, b"b")})
    view.poll()
    assert view.load_many([a, missing, b]) == {a: (b"a", tid), b: (b"b", tid)}
    assert view.load_many([]) == {}
    many = [storage.new_oid() for _ in range(2500)]  # more than one batch
    tid2 = commit(view, {oid: (z64, oid) for oid in many})
    view.poll()
    loaded = view.load_many(many + [missing])
    assert loaded == {oid: (oid, tid2) for oid in many}


def test_load_serial_of_unknown_revision(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    tid = commit(view, {oid: (z64, b"x")})
    with pytest.raises(POSKeyError):
        view.load_serial(oid, p64(u64(tid) - 1))
    with pytest.raises(POSKeyError):
        view.load_serial(storage.new_oid(), tid)


def test_new_oids_are_unique_and_never_the_root(storage):
    view = storage.open_view()
    oids = [storage.new_oid() for _ in range(300)] + [view.new_oid() for _ in range(300)]
    assert len(set(oids)) == len(oids)
    assert ROOT_OID not in oids
    assert all(isinstance(oid, bytes) and len(oid) == 8 for oid in oids)


def test_new_oids_are_unique_across_threads(storage):
    got: list[list[bytes]] = [[] for _ in range(4)]

    def take(bucket: list[bytes]) -> None:
        for _ in range(500):
            bucket.append(storage.new_oid())

    threads = [threading.Thread(target=take, args=(bucket,)) for bucket in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [oid for bucket in got for oid in bucket]
    assert len(set(every)) == 2000


def test_tids_strictly_increase(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    serial, tids = z64, []
    for i in range(20):
        serial = commit(view, {oid: (serial, b"%d" % i)})
        tids.append(serial)
    assert tids == sorted(tids) and len(set(tids)) == 20
    assert storage.last_transaction() == tids[-1]
    if storage.keep_history:
        assert [t.tid for t in storage.iterator()] == tids
    else:
        # The current revision, with the tid that wrote it, and perhaps older ones
        # that an open view may still read (the view above is open), in tid order.
        listed = [(r.oid, r.tid) for t in storage.iterator() for r in t]
        assert listed[-1] == (oid, tids[-1])
        assert [tid for _, tid in listed] == [tid for tid in tids if tid in {t for _, t in listed}]


# -- snapshots ----------------------------------------------------------------------------


def test_reads_are_repeatable_until_poll(storage):
    writer, reader = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(writer, {oid: (z64, b"v1")})
    assert reader.poll() == {oid}
    assert reader.load(oid) == (b"v1", first)
    second = commit(writer, {oid: (first, b"v2")})
    assert reader.load(oid) == (b"v1", first)  # same snapshot, same answer
    assert reader.load_many([oid]) == {oid: (b"v1", first)}
    assert reader.snapshot == first
    assert reader.poll() == {oid}
    assert reader.snapshot == second
    assert reader.load(oid) == (b"v2", second)


def test_a_stale_snapshot_never_reads_a_newer_revision(storage):
    """A view that has not loaded yet may be told its revision is gone (history-free),
    but never gets a revision newer than its snapshot."""
    writer, reader = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(writer, {oid: (z64, b"v1")})
    reader.poll()
    commit(writer, {oid: (first, b"v2")})
    try:
        assert reader.load(oid) == (b"v1", first)
    except ReadConflictError:
        assert not storage.keep_history
    new = storage.new_oid()
    commit(writer, {new: (z64, b"new")})
    with pytest.raises((POSKeyError, ReadConflictError)):
        reader.load(new)
    try:
        assert new not in reader.load_many([new])
    except ReadConflictError:
        assert not storage.keep_history


def test_poll_reports_others_commits_only(storage):
    a, b = storage.open_view(), storage.open_view()
    x, y, z = storage.new_oid(), storage.new_oid(), storage.new_oid()
    commit(a, {x: (z64, b"x")})
    commit(b, {y: (z64, b"y")})
    commit(a, {z: (z64, b"z")})
    assert a.poll() == {y}
    assert b.poll() == {x, z}
    assert a.poll() == set() and b.poll() == set()


def test_commit_is_atomic_for_readers(storage):
    writer, reader = storage.open_view(), storage.open_view()
    oids = [storage.new_oid() for _ in range(50)]
    commit(writer, {oid: (z64, b"0") for oid in oids})
    reader.poll()
    serials = reader.load_many(oids)
    writer.poll()
    tid = commit(writer, {oid: (serials[oid][1], b"1") for oid in oids})
    assert reader.poll() == set(oids)
    assert reader.load_many(oids) == {oid: (b"1", tid) for oid in oids}


def test_historical_view(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    first = commit(view, {oid: (z64, b"v1")})
    second = commit(view, {oid: (first, b"v2")})
    old = storage.open_view(before=second)
    assert old.poll() == set()
    if storage.keep_history:
        assert old.load(oid) == (b"v1", first)
    with pytest.raises(ReadOnlyError):
        old.tpc_begin(TransactionMeta())
    nothing = storage.open_view(before=first)
    with pytest.raises((POSKeyError, ReadConflictError)):
        nothing.load(oid)


def test_release_gives_back_a_commit_in_progress(storage):
    view, other = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    view.tpc_begin(TransactionMeta())
    view.store(oid, z64, b"never")
    view.tpc_vote()
    view.release()
    tid = commit(other, {oid: (z64, b"x")})  # the commit lock was released
    assert storage.last_transaction() == tid
    assert other.poll() == set()
    assert other.load(oid) == (b"x", tid)


# -- two-phase commit ------------------------------------------------------------------------


def test_write_conflict(storage):
    a, b = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(a, {oid: (z64, b"v1")})
    second = commit(a, {oid: (first, b"v2")})
    b.tpc_begin(TransactionMeta())
    b.store(oid, first, b"stale")
    with pytest.raises(ConflictError) as info:
        b.tpc_vote()
    assert not isinstance(info.value, ReadConflictError)
    assert info.value.oid == oid
    assert info.value.serials == (second, first)
    b.tpc_abort()
    assert storage.last_transaction() == second
    a.poll()
    assert a.load(oid) == (b"v2", second)
    commit(b, {oid: (second, b"v3")})  # the lock was released


def test_new_object_conflicts_with_an_existing_one(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    commit(view, {oid: (z64, b"v1")})
    with pytest.raises(ConflictError):
        commit(view, {oid: (z64, b"again")})


def test_abort_leaves_no_trace(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    first = commit(view, {oid: (z64, b"v1")})
    for vote in (False, True):
        view.tpc_begin(TransactionMeta(description="aborted"))
        view.store(oid, first, b"never")
        view.store(storage.new_oid(), z64, b"never")
        if vote:
            view.tpc_vote()
        view.tpc_abort()
    assert storage.last_transaction() == first
    assert len(storage) == 1
    assert [t.description for t in storage.iterator()] == [""]
    other = storage.open_view()
    assert other.load(oid) == (b"v1", first)
    commit(other, {oid: (first, b"v2")})  # nothing is left locked


def test_read_current_check(storage):
    a, b = storage.open_view(), storage.open_view()
    x, y = storage.new_oid(), storage.new_oid()
    tx = commit(a, {x: (z64, b"x"), y: (z64, b"y")})
    b.poll()
    # x still current: the check passes.
    b.tpc_begin(TransactionMeta())
    b.check_current(x, tx)
    b.store(y, tx, b"y2")
    b.tpc_vote()
    ty = b.tpc_finish()
    # x changed by someone else: the check fails.
    a.poll()
    tx2 = commit(a, {x: (tx, b"x2")})
    b.tpc_begin(TransactionMeta())
    b.check_current(x, tx)
    b.store(y, ty, b"y3")
    with pytest.raises(ReadConflictError) as info:
        b.tpc_vote()
    assert info.value.oid == x
    assert info.value.serials == (tx2, tx)
    b.tpc_abort()
    assert storage.last_transaction() == tx2


def test_conflict_resolution(storage):
    a, b = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    first = commit(a, {oid: (z64, b"1")})
    second = commit(a, {oid: (first, b"11")})
    calls = []

    def resolve(oid_, committed, read, committed_data, old_data, new_data):
        calls.append((oid_, committed, read, committed_data, old_data, new_data))
        return committed_data + new_data

    b.tpc_begin(TransactionMeta())
    b.store(oid, first, b"2")
    assert b.tpc_vote(resolve) == {oid}
    third = b.tpc_finish()
    (call,) = calls
    assert call[:4] == (oid, second, first, b"11") and call[5] == b"2"
    # The revision the transaction started from; a history-free storage may have
    # dropped it once no view could read it.
    assert call[4] == b"1" if storage.keep_history else call[4] in (b"1", None)
    b.poll()
    assert b.load(oid) == (b"112", third)


def test_protocol_order_is_enforced(storage):
    view = storage.open_view()
    with pytest.raises(StorageTransactionError):
        view.store(storage.new_oid(), z64, b"x")
    with pytest.raises(StorageTransactionError):
        view.tpc_vote()
    with pytest.raises(StorageTransactionError):
        view.tpc_finish()
    view.tpc_begin(TransactionMeta())
    with pytest.raises(StorageTransactionError):
        view.tpc_begin(TransactionMeta())
    view.tpc_abort()


def test_threads_commit_without_lost_updates(storage):
    oid = storage.new_oid()
    commit(storage.open_view(), {oid: (z64, b"0")})
    conflicts = []

    def increment(times: int) -> None:
        view = storage.open_view()
        done = 0
        while done < times:
            view.poll()
            try:
                data, serial = view.load(oid)  # history-free: ReadConflictError possible
                commit(view, {oid: (serial, b"%d" % (int(data) + 1))})
                done += 1
            except ConflictError:
                conflicts.append(1)
        view.release()

    threads = [threading.Thread(target=increment, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    view = storage.open_view()
    assert view.load(oid)[0] == b"100"


# -- whole-storage operations --------------------------------------------------------------


def test_history_newest_first(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    serial, tids = z64, []
    for i in range(4):
        serial = commit(view, {oid: (serial, b"x" * (i + 1))}, TransactionMeta(description=f"t{i}"))
        tids.append(serial)
    entries = storage.history(oid, size=3)
    if storage.keep_history:
        assert [e.tid for e in entries] == tids[:0:-1]
        assert [e.description for e in entries] == ["t3", "t2", "t1"]
        assert [e.size for e in entries] == [4, 3, 2]
    else:
        assert [e.tid for e in entries] == [tids[-1]]
    assert [e.tid for e in storage.history(oid)] == [tids[-1]]
    assert entries[0].as_dict()["serial"] == tids[-1]


def test_iterator_bounds(storage):
    view = storage.open_view()
    oids = [storage.new_oid() for _ in range(5)]
    tids = [commit(view, {oid: (z64, b"x")}, TransactionMeta(user=f"u{i}")) for i, oid in enumerate(oids)]
    assert [t.tid for t in storage.iterator()] == tids
    assert [t.user for t in storage.iterator(tids[1], tids[3])] == ["u1", "u2", "u3"]
    assert [t.tid for t in storage.iterator(start=tids[3])] == tids[3:]
    assert [t.tid for t in storage.iterator(stop=tids[0])] == tids[:1]
    assert [[r.oid for r in t] for t in storage.iterator()] == [[oid] for oid in oids]


def test_len_counts_current_objects(storage):
    view = storage.open_view()
    assert len(storage) == 0
    create_root(storage)
    assert len(storage) == 1  # the root counts
    a, b = storage.new_oid(), storage.new_oid()
    first = commit(view, {a: (z64, b"a"), b: (z64, b"b")})
    commit(view, {a: (first, b"a2")})
    assert len(storage) == 3  # the root, a and b; a's two revisions count once


def test_pack_removes_old_revisions_and_garbage(storage):
    view = storage.open_view()
    kept, garbage, later = storage.new_oid(), storage.new_oid(), storage.new_oid()
    t1 = commit(view, {ROOT_OID: (z64, record("root", kept, garbage)), kept: (z64, record("k1")), garbage: (z64, record("g"))})
    t2 = commit(view, {kept: (t1, record("k2"))})
    t3 = commit(view, {ROOT_OID: (t1, record("root", kept))})  # garbage is unreachable now
    t4 = commit(view, {later: (z64, record("later")), kept: (t2, record("k3"))})
    lines = []
    stats = pack_storage(storage, t3, references=references, progress=lines.append)
    assert isinstance(stats, PackStats)
    assert stats.objects_removed == 1
    assert "removed" in lines[-1]
    reader = storage.open_view()
    assert payload(reader.load(kept)[0]) == "k3"
    assert payload(reader.load(later)[0]) == "later"  # written after the pack tid
    with pytest.raises(POSKeyError):
        reader.load(garbage)
    assert len(storage) == 3
    if storage.keep_history:
        assert [e.tid for e in storage.history(kept, size=10)] == [t4, t2]  # t2 was current at t3
        assert [e.tid for e in storage.history(ROOT_OID, size=10)] == [t3]
        assert stats.revisions_removed >= 3  # root@t1, kept@t1, garbage@t1
    assert storage.last_transaction() == t4
    assert [t.tid for t in storage.iterator()][-1] == t4


def test_pack_keeps_objects_referenced_after_the_pack_tid(storage):
    view = storage.open_view()
    orphan = storage.new_oid()
    t1 = commit(view, {ROOT_OID: (z64, record("root")), orphan: (z64, record("o"))})
    t2 = commit(view, {ROOT_OID: (t1, record("root", orphan))})  # linked after the pack tid
    pack_storage(storage, t1, references=references)
    reader = storage.open_view()
    assert payload(reader.load(orphan)[0]) == "o"
    assert reader.load(ROOT_OID)[1] == t2


def test_pack_without_references_removes_no_object(storage):
    view = storage.open_view()
    orphan = storage.new_oid()
    t1 = commit(view, {ROOT_OID: (z64, record("root")), orphan: (z64, record("o"))})
    t2 = commit(view, {ROOT_OID: (t1, record("root", orphan))})
    stats = pack_storage(storage, t2, collect=False)
    assert stats.objects_removed == 0
    assert len(storage) == 2
    assert storage.open_view().load(orphan)[1] == t1


def test_close(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    commit(view, {oid: (z64, b"x")})
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(StorageError):
        storage.open_view()
    with pytest.raises(StorageError):
        storage.new_oid()


def test_pack_reports_progress(storage):
    view = storage.open_view()
    commit(view, {ROOT_OID: (z64, record("root"))})
    lines: list[str] = []
    pack_storage(storage, storage.last_transaction(), references=references, progress=lines.append)
    # One line, one shape on every backend; a front end can tell it ends the pack.
    assert re.fullmatch(r"packed .+: removed \d+ revisions, \d+ objects, \d+ transactions", lines[-1])
    assert lines[-1].finished


# -- what undo needs: ended objects, the transaction log, partners by key ------------

def test_a_deleted_record_ends_the_object(storage):
    from atoll.storage.base import DELETED

    view = storage.open_view()
    keep, ended = storage.new_oid(), storage.new_oid()
    t1 = commit(view, {ROOT_OID: (z64, record("root", keep, ended)), keep: (z64, record("k")), ended: (z64, record("e"))})
    assert len(storage) == 3
    t2 = commit(view, {ended: (t1, DELETED)})
    reader = storage.open_view()
    with pytest.raises(POSKeyError):
        reader.load(ended)
    assert set(reader.load_many([keep, ended])) == {keep}
    with pytest.raises(POSKeyError):
        reader.load_serial(ended, t2)
    assert len(storage) == 2
    [txn] = list(storage.iterator(t2, t2))
    assert [(r.oid, r.data) for r in txn.records] == [(ended, None)]
    if storage.keep_history:  # history keeps the revision it ended
        assert payload(reader.load_serial(ended, t1)) == "e"
        assert payload(storage.open_view(before=t2).load(ended)[0]) == "e"
    # An ended object has no current serial: storing it again expects none (z64).
    t3 = commit(view, {ended: (z64, record("back"))})
    reader.poll()
    assert reader.load(ended) == (record("back"), t3)
    assert len(storage) == 3
    pack_storage(storage, t3, references=references)  # an ended revision references nothing: pack copes
    assert reader.load(ended)[1] == t3


def test_deleted_record_cannot_be_merged(storage):
    from atoll.storage.base import DELETED

    view, other = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    t1 = commit(view, {oid: (z64, record(1))})
    other.poll()
    commit(view, {oid: (t1, record(2))})
    merges = []
    with pytest.raises(ConflictError):
        other.tpc_begin(TransactionMeta())
        other.store(oid, t1, DELETED)
        try:
            other.tpc_vote(lambda *args: merges.append(args) or record(3))
        finally:
            other.tpc_abort()
    assert merges == []


def test_transaction_log_newest_first_in_pages(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    tids = [commit(view, {oid: (z64, record(0))}, TransactionMeta(user="u", description="d0", extension={"k": 0}))]
    for i in range(1, 5):
        tids.append(commit(view, {oid: (tids[-1], record(i))}, TransactionMeta(description=f"d{i}", id=f"id{i}")))
    log = storage.transaction_log()
    assert [info.tid for info in log] == tids[::-1]
    oldest = log[-1]
    assert (oldest.user, oldest.description, oldest.extension) == ("u", "d0", {"k": 0})
    if storage.keep_history:
        assert all(info.size == len(record(0)) for info in log)
    page = storage.transaction_log(before=tids[3], limit=2)
    assert [info.tid for info in page] == [tids[2], tids[1]]
    assert storage.transaction_log(before=tids[0]) == []


def test_find_transactions_by_commit_key(storage):
    from atoll.storage.base import commit_key

    view = storage.open_view()
    oid = storage.new_oid()
    t1 = commit(view, {oid: (z64, record(1))}, TransactionMeta(id="first"))
    t2 = commit(view, {oid: (t1, record(2))}, TransactionMeta(id="second"))
    assert [info.key for info in storage.transaction_log()] == [commit_key("second"), commit_key("first")]
    keys = [commit_key("first"), commit_key("second"), commit_key("absent"), ""]
    assert storage.find_transactions(keys) == {commit_key("first"): t1, commit_key("second"): t2}
    assert storage.find_transactions(keys, t2, t2) == {commit_key("second"): t2}


# -- robustness (issue 16) -----------------------------------------------------------------


def another_process(storage: Storage) -> Storage | None:
    """A second instance on the same data, as another process would open it (None for
    in-memory storages, which one process owns)."""
    if storage.name.startswith("memory") or not hasattr(storage, "path") and not hasattr(storage, "schema"):
        return None
    if hasattr(storage, "path"):
        from atoll.storage.sqlite import SQLiteStorage

        return SQLiteStorage(storage.path, keep_history=storage.keep_history)
    from atoll.storage.postgresql import PostgreSQLStorage

    return PostgreSQLStorage(storage._dsn, schema=storage.schema, keep_history=storage.keep_history)


def test_oids_never_reused_after_a_store_of_an_oid_never_handed_out(storage):
    """A copy stores oids new_oid() never handed out; new_oid() then never returns them."""
    create_root(storage)
    view = storage.open_view()
    far = p64(5000)
    commit(view, {far: (z64, record("copied")), p64(1): (z64, record("copied 1"))})
    handed = {storage.new_oid() for _ in range(300)}
    assert far not in handed and p64(1) not in handed
    assert all(u64(oid) > 5000 for oid in handed)
    very_far = p64(2**40)  # a sparse import
    commit(view, {very_far: (z64, record("far away"))})
    handed = [storage.new_oid() for _ in range(5000)]  # past any block reserved before
    assert very_far not in handed and u64(handed[-1]) > 2**40
    view.release()


def test_oids_never_reused_when_a_store_lands_inside_the_reserved_block(storage):
    """The storage reserved a block of oids, then a commit stored oids inside it."""
    create_root(storage)
    first = storage.new_oid()  # a block is reserved from here on
    view = storage.open_view()
    inside = [p64(u64(first) + n) for n in range(1, 6)]
    commit(view, {oid: (z64, record("copied")) for oid in inside})
    handed = {storage.new_oid() for _ in range(50)}
    assert not handed & set(inside)
    view.release()


def test_oids_never_reused_across_processes(storage):
    """Another process stores oids in this one's reserved block and beyond it: this
    one's new_oid() (after a poll, as a connection does at each transaction) never
    hands them out."""
    other = another_process(storage)
    if other is None:
        pytest.skip("an in-memory storage belongs to one process")
    try:
        create_root(storage)
        first = storage.new_oid()  # this process's block
        stored = [p64(u64(first) + n) for n in range(1, 4)] + [p64(u64(first) + 100_000)]
        other_view = other.open_view()
        commit(other_view, {oid: (z64, record("from elsewhere")) for oid in stored})
        other_view.release()
        view = storage.open_view()  # polls: sees the other process's commit
        handed = {storage.new_oid() for _ in range(50)}
        assert not handed & set(stored)
        assert all(u64(oid) > u64(stored[-1]) for oid in handed)
        # and a third instance, opened afterwards, starts past them too
        third = another_process(storage)
        try:
            assert u64(third.new_oid()) > u64(stored[-1])
        finally:
            third.close()
        view.release()
    finally:
        other.close()


def test_verify_finds_nothing_in_a_sound_storage(storage):
    create_root(storage)
    view = storage.open_view()
    for n in range(3):
        commit(view, {p64(n + 1): (z64, record(n))})
    lines: list[str] = []
    assert storage.verify(progress=lines.append) == []
    assert lines and "0 damaged" in lines[-1]
    view.release()


def test_view_close_releases_the_view(storage):
    create_root(storage)
    view = storage.open_view()
    view.tpc_begin(TransactionMeta())
    view.store(p64(1), z64, record("never"))
    view.close()
    view.close()  # idempotent
    other = storage.open_view()
    with pytest.raises(POSKeyError):
        other.load(p64(1))  # the commit in progress was aborted
    commit(other, {p64(2): (z64, record("after"))})  # and no lock is left held
    other.release()


def test_last_pack_remembers_the_newest_pack(storage):
    assert storage.last_pack() == z64
    view = storage.open_view()
    t1 = commit(view, {ROOT_OID: (z64, record("root"))})
    t2 = commit(view, {ROOT_OID: (t1, record("root 2"))})
    pack_storage(storage, t2, references=references)
    assert storage.last_pack() == t2
    pack_storage(storage, t1, references=references)  # an older pack tid does not move it back
    assert storage.last_pack() == t2


def test_a_commit_may_ask_for_its_tid(storage):
    view = storage.open_view()
    oid = storage.new_oid()
    later = p64(u64(storage.last_transaction()) + 1000) if storage.last_transaction() != z64 else p64(1 << 60)
    view.tpc_begin(TransactionMeta(description="copied", tid=later))
    view.store(oid, z64, b"x")
    view.tpc_vote()
    assert view.tpc_finish() == later
    assert storage.last_transaction() == later
    view.poll()
    assert view.load(oid) == (b"x", later)
    view.tpc_begin(TransactionMeta(tid=later))  # not later than the last: refused, nothing written
    view.store(oid, later, b"y")
    with pytest.raises(StorageError, match="tids only increase"):
        view.tpc_vote()
    view.tpc_abort()
    assert storage.last_transaction() == later
