"""PostgreSQLStorage specifics: schema, names, snapshots, the commit lock across
PREPARE, recovery of live/dead owners, NOTIFY, pack. The protocol itself is checked
by the shared contract suite; processes and crashes are in test_postgresql_processes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import postgres_support  # noqa: E402
from postgres_support import make_storage, postgres_dsn  # noqa: E402

from atoll.collection.marking import pack_storage
from atoll.errors import ConflictError, POSKeyError, ReadConflictError, ReadOnlyError, StorageError  # noqa: E402
from atoll.ids import p64, u64, z64  # noqa: E402
from atoll.storage.base import TransactionMeta  # noqa: E402


@pytest.fixture(params=[True, False], ids=["history", "history_free"])
def storage(request):
    storage = make_storage(request.node.name, keep_history=request.param)
    yield storage
    storage.close()


def commit(storage, writes: dict[bytes, bytes], meta: TransactionMeta | None = None, view=None) -> bytes:
    """Commit ``writes`` (oid -> data) through a fresh view, reading serials first."""
    own = view is None
    view = view or storage.open_view()
    try:
        view.tpc_begin(meta or TransactionMeta())
        current = view.load_many(writes)
        for oid, data in writes.items():
            view.store(oid, current.get(oid, (None, z64))[1], data)
        view.tpc_vote()
        return view.tpc_finish()
    finally:
        if own:
            view.release()


def prepared_gids(storage) -> list[str]:
    with postgres_support.admin_connection() as conn:
        rows = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"atoll|{storage.schema}|%",))
        return [row[0] for row in rows]


def test_name_and_sort_key_identify_the_schema_without_password(storage):
    other = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history)
    try:
        assert other.sort_key() == storage.sort_key()
        assert storage.schema in storage.name and "password" not in storage.name
    finally:
        other.close()


def test_unreachable_server_gives_one_line_without_the_password():
    from atoll.storage.postgresql import PostgreSQLStorage

    with pytest.raises(StorageError) as info:
        PostgreSQLStorage("host=127.0.0.1 port=1 dbname=test user=postgres password=s3cret connect_timeout=2")
    message = str(info.value)
    assert "cannot connect" in message and "s3cret" not in message and "\n" not in message


def test_bad_schema_name_is_refused():
    from atoll.storage.postgresql import PostgreSQLStorage

    with pytest.raises(ValueError, match="schema 'Bad-Name'"):
        PostgreSQLStorage(postgres_dsn(), schema="Bad-Name")


def test_reopening_with_the_other_mode_is_refused(storage):
    with pytest.raises(StorageError, match=f"keep_history={storage.keep_history}"):
        type(storage)(postgres_dsn(), schema=storage.schema, keep_history=not storage.keep_history)


def test_read_only_open_of_a_missing_schema_fails_and_creates_nothing():
    from atoll.storage.postgresql import PostgreSQLStorage

    postgres_support.require_postgres()
    with pytest.raises(StorageError, match="no atoll database in schema 'atoll_test_absent'"):
        PostgreSQLStorage(postgres_dsn(), schema="atoll_test_absent", read_only=True)
    with postgres_support.admin_connection() as conn:
        assert conn.execute("SELECT to_regnamespace('atoll_test_absent')").fetchone()[0] is None


def test_read_only_storage_refuses_commits(storage):
    commit(storage, {z64: b"root"})
    reader = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history, read_only=True)
    try:
        view = reader.open_view()
        assert view.load(z64)[0] == b"root"
        with pytest.raises(ReadOnlyError):
            view.tpc_begin(TransactionMeta())
        view.release()
    finally:
        reader.close()


def test_zero_max_prepared_transactions_is_named_with_the_fix(monkeypatch):
    from atoll.storage import postgresql_sql

    postgres_support.require_postgres()
    monkeypatch.setattr(postgresql_sql, "MAX_PREPARED", "SELECT '0'")  # as on a default server
    with pytest.raises(StorageError) as info:
        make_storage("no_prepare")
    message = str(info.value)
    assert "max_prepared_transactions = 0" in message
    assert "ALTER SYSTEM SET max_prepared_transactions" in message and "two_phase=False" in message


def test_two_phase_false_commits_without_prepare(monkeypatch):
    from atoll.storage import postgresql_sql

    postgres_support.require_postgres()
    monkeypatch.setattr(postgresql_sql, "MAX_PREPARED", "SELECT '0'")
    storage = make_storage("no_prepare_ok", two_phase=False)
    view = storage.open_view()
    view.tpc_begin(TransactionMeta())
    view.store(z64, z64, b"root")
    view.tpc_vote()
    assert prepared_gids(storage) == []
    tid = view.tpc_finish()
    view.release()
    assert storage.last_transaction() == tid
    storage.close()


def test_view_reads_its_snapshot_until_poll(storage):
    first = commit(storage, {z64: b"one"})
    view = storage.open_view()
    assert view.load(z64) == (b"one", first)
    second = commit(storage, {z64: b"two"})
    assert view.load(z64) == (b"one", first)
    assert view.load_many([z64]) == {z64: (b"one", first)}
    assert view.poll() == {z64}
    assert view.snapshot == second and view.load(z64) == (b"two", second)
    assert view.poll() == set()
    view.release()


def test_history_free_historical_view_of_an_overwritten_object_raises_read_conflict():
    storage = make_storage("hf_historical", keep_history=False)
    first = commit(storage, {z64: b"one"})
    commit(storage, {z64: b"two"})
    view = storage.open_view(before=p64(u64(first) + 1))
    with pytest.raises(ReadConflictError):
        view.load(z64)
    view.release()
    storage.close()


def test_poll_leaves_out_the_views_own_commits(storage):
    view = storage.open_view()
    commit(storage, {z64: b"mine"}, view=view)
    other = storage.new_oid()
    commit(storage, {other: b"theirs"})
    assert view.poll() == {other}
    view.release()


def test_tids_increase_and_oids_are_unique_across_instances(storage):
    twin = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history)
    try:
        oids = {storage.new_oid() for _ in range(150)} | {twin.new_oid() for _ in range(150)}
        assert len(oids) == 300 and z64 not in oids
        tids = [commit(s, {z64: b"%d" % i}) for i, s in enumerate([storage, twin] * 3)]
        assert tids == sorted(tids) and len(set(tids)) == len(tids)
        assert twin.last_transaction() == storage.last_transaction() == tids[-1]
    finally:
        twin.close()


def test_conflict_in_vote_leaves_no_trace(storage):
    base = commit(storage, {z64: b"zero"})
    stale = storage.open_view()
    commit(storage, {z64: b"one"})
    stale.tpc_begin(TransactionMeta())
    stale.store(z64, base, b"lost")
    with pytest.raises(ConflictError):
        stale.tpc_vote()
    stale.tpc_abort()
    assert prepared_gids(storage) == []
    assert commit(storage, {z64: b"two"}) == storage.last_transaction()  # the lock was freed
    stale.release()


def test_a_small_commit_locks_and_writes_in_one_round_trip_unless_another_committed(storage, monkeypatch):
    from atoll.storage import postgresql_view

    wrote: list[bool] = []
    original = type(storage)._lock_commit_and_write

    def spy(self, conn, params, prepare_as=None):
        last, written = original(self, conn, params, prepare_as)
        wrote.append(written)
        return last, written

    def locked_first(self, conn):
        wrote.append("locked first")
        return original_lock(self, conn)

    original_lock = type(storage)._lock_commit
    monkeypatch.setattr(type(storage), "_lock_commit_and_write", spy)
    monkeypatch.setattr(type(storage), "_lock_commit", locked_first)
    a, b, c, d = (storage.new_oid() for _ in range(4))  # oids of this process's block
    first = commit(storage, {a: b"zero"})
    assert wrote == [True]  # nothing committed since the snapshot: written with the lock
    behind = storage.open_view()  # its snapshot: first
    other = commit(storage, {b: b"other"})
    behind.tpc_begin(TransactionMeta())
    behind.store(c, z64, b"behind")
    behind.tpc_vote()  # the bet is lost: nothing written, then checked and written under the lock
    tid = behind.tpc_finish()
    assert wrote == [True, True, False] and tid > other > first
    assert storage.open_view().load(c) == (b"behind", tid)
    assert storage.open_view().load(b) == (b"other", other)
    assert [t.tid for t in storage.iterator()] == [first, other, tid]  # the lost bet wrote nothing
    big = b"x" * (postgresql_view.ONE_TRIP_BYTES + 1)
    assert commit(storage, {d: big}) == storage.last_transaction()
    assert wrote[-1] == "locked first"
    behind.release()


def test_a_collection_member_locks_writes_and_prepares_in_one_round_trip_unless_another_committed(
    storage, monkeypatch, tmp_path
):
    from atoll.storage.base import Member
    from atoll.storage.sqlite import SQLiteStorage

    wrote: list[object] = []
    original = type(storage)._lock_commit_and_write
    original_lock = type(storage)._lock_commit

    def spy(self, conn, params, prepare_as=None):
        last, written = original(self, conn, params, prepare_as)
        if prepare_as is not None:  # a member's bet (not a commit of this database alone)
            wrote.append((written, prepared_gids(self)))  # what is prepared once the bet is settled
        return last, written

    def locked_first(self, conn):
        wrote.append("locked first")
        return original_lock(self, conn)

    monkeypatch.setattr(type(storage), "_lock_commit_and_write", spy)
    monkeypatch.setattr(type(storage), "_lock_commit", locked_first)
    decider = SQLiteStorage(tmp_path / "decider.db")
    members = [Member("0", decider.decision_home()), Member("1", storage.decision_home())]

    def collection_commit(txn_id: str, member, oid: bytes, data: bytes) -> bytes:
        first = decider.open_view()
        for order, each in enumerate((first, member)):
            each.tpc_begin(TransactionMeta(id=txn_id, members=members, order_key=str(order)))
        first.store(decider.new_oid(), z64, b"decider's part")
        member.store(oid, z64, data)
        first.tpc_vote()
        member.tpc_vote()
        assert len(prepared_gids(storage)) == 1  # durable and invisible until the decision
        first.tpc_finish()
        tid = member.tpc_finish()
        first.release()
        return tid

    try:
        a, b, c = (storage.new_oid() for _ in range(3))  # oids of this process's block
        first = collection_commit("one", storage.open_view(), a, b"member")
        assert wrote == [(True, [wrote[0][1][0]])]  # written and prepared in the one round trip
        behind = storage.open_view()  # its snapshot: first
        other = commit(storage, {b: b"other"})
        tid = collection_commit("two", behind, c, b"behind")
        # The bet is lost: the lock alone was prepared, rolled back and taken again
        # (nothing prepared once the bet is settled); then the commit was checked,
        # written and prepared under the lock.
        assert wrote[1:] == ["locked first", (False, [])] and tid > other > first
        assert storage.open_view().load(c) == (b"behind", tid)
        assert storage.open_view().load(b) == (b"other", other)
        assert [t.tid for t in storage.iterator()] == [first, other, tid]  # the lost bet wrote nothing
        assert prepared_gids(storage) == []
        behind.release()
        # After a lost bet the next member commit locks first; it finds that it
        # would have won, so the one after bets again.
        del wrote[:]
        collection_commit("three", storage.open_view(), storage.new_oid(), b"three")
        assert wrote == ["locked first"]
        collection_commit("four", storage.open_view(), storage.new_oid(), b"four")
        assert wrote == ["locked first", (True, wrote[1][1])] and len(wrote[1][1]) == 1
    finally:
        decider.close()


def test_members_committing_at_once_to_one_database_lose_nothing(storage, tmp_path):
    """Two collections (each an SQLite decider and this database) commit at once:
    members lose their bets to each other, roll back what they prepared and commit
    under the lock; every commit is there in the end and nothing stays prepared."""
    from atoll.storage.base import Member
    from atoll.storage.sqlite import SQLiteStorage

    rounds, errors = 40, []
    oids = [storage.new_oid() for _ in range(2)]

    def run(n: int) -> None:
        decider = SQLiteStorage(tmp_path / f"decider{n}.db")
        members = [Member("0", decider.decision_home()), Member("1", storage.decision_home())]
        serial = z64
        try:
            for i in range(rounds):
                first, member = decider.open_view(), storage.open_view()
                for order, each in enumerate((first, member)):
                    each.tpc_begin(TransactionMeta(id=f"{n}-{i}", members=members, order_key=str(order)))
                first.store(decider.new_oid(), z64, b"decider's part")
                member.store(oids[n], serial, b"%d" % i)
                first.tpc_vote()
                member.tpc_vote()
                first.tpc_finish()
                serial = member.tpc_finish()
                first.release()
                member.release()
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
        finally:
            decider.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    view = storage.open_view()
    assert [view.load(oid)[0] for oid in oids] == [b"%d" % (rounds - 1)] * 2
    assert len(list(storage.iterator())) == 2 * rounds
    assert prepared_gids(storage) == []
    view.release()


def test_a_member_vote_stopped_after_its_one_round_trip_prepare_is_rolled_back_by_abort(
    storage, monkeypatch, tmp_path
):
    """Whatever stops a member's vote once its pipeline's PREPARE ran on the server
    (an interrupt while the answer comes back, say), its tpc_abort rolls the
    prepared transaction back: left there, it would hold the commit lock of every
    process while the session lives."""
    from atoll.storage.base import Member
    from atoll.storage.sqlite import SQLiteStorage

    original = type(storage)._check_oid_epoch
    stops = ["after the pipeline"]

    def interrupted(self, epoch):
        if stops:
            raise RuntimeError(stops.pop())
        return original(self, epoch)

    decider = SQLiteStorage(tmp_path / "decider.db")
    members = [Member("0", decider.decision_home()), Member("1", storage.decision_home())]
    try:
        first, member = decider.open_view(), storage.open_view()
        for order, each in enumerate((first, member)):
            each.tpc_begin(TransactionMeta(id="interrupted", members=members, order_key=str(order)))
        first.store(decider.new_oid(), z64, b"decider's part")
        member.store(storage.new_oid(), z64, b"member's part")
        first.tpc_vote()
        monkeypatch.setattr(type(storage), "_check_oid_epoch", interrupted)
        with pytest.raises(RuntimeError, match="after the pipeline"):
            member.tpc_vote()
        assert len(prepared_gids(storage)) == 1  # PREPARE had run
        member.tpc_abort()
        first.tpc_abort()
        assert prepared_gids(storage) == []
        before = storage.last_transaction()
        assert commit(storage, {storage.new_oid(): b"next"}) > before  # the commit lock is free
        first.release()
        member.release()
    finally:
        decider.close()


def test_commit_lock_is_held_from_vote_until_finish(storage):
    first = storage.open_view()
    first.tpc_begin(TransactionMeta())
    first.store(z64, z64, b"first")
    first.tpc_vote()
    assert prepared_gids(storage) == []  # the only participant: one phase, no PREPARE
    impatient = type(storage)(
        postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history,
        commit_lock_timeout=0.5, lock_wait=0.2,
    )
    try:
        assert impatient.recover() == {}  # the owner is alive: its transaction is left alone
        second = impatient.open_view()
        second.tpc_begin(TransactionMeta())
        second.store(impatient.new_oid(), z64, b"second")
        with pytest.raises(StorageError, match="could not get the commit lock within 0.5 s"):
            second.tpc_vote()
        second.tpc_abort()
        tid = first.tpc_finish()
        second.tpc_begin(TransactionMeta())
        second.store(impatient.new_oid(), z64, b"second")
        second.tpc_vote()
        assert second.tpc_finish() > tid
        second.release()
    finally:
        first.release()
        impatient.close()


def test_abort_after_vote_rolls_back(storage):
    view = storage.open_view()
    view.tpc_begin(TransactionMeta())
    view.store(z64, z64, b"never")
    view.tpc_vote()
    view.tpc_abort()
    assert prepared_gids(storage) == []
    assert storage.last_transaction() == z64
    with pytest.raises(POSKeyError):
        view.load(z64)
    view.release()


def test_metadata_history_and_iteration(storage):
    meta = TransactionMeta(user="ann", description="first", extension={"k": 1})
    first = commit(storage, {z64: b"a"}, meta)
    second = commit(storage, {z64: b"bb"}, TransactionMeta(description="second"))
    history = storage.history(z64, 5)
    expected = [second, first] if storage.keep_history else [second]
    assert [entry.tid for entry in history] == expected
    assert history[0].description == "second" and history[0].size == 2
    records = list(storage.iterator())
    assert [r.tid for r in records][-1] == second
    if storage.keep_history:
        assert (records[0].user, records[0].extension, records[0].records[0].data) == ("ann", {"k": 1}, b"a")
    with pytest.raises(POSKeyError):
        storage.history(p64(12345))


def test_wait_for_commit_wakes_on_another_commit(storage):
    assert storage.wait_for_commit(0.05) is None
    twin = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history)
    woken: list[bytes | None] = []
    listening = threading.Thread(target=lambda: woken.append(storage.wait_for_commit(30)))
    try:
        listening.start()
        tid = commit(twin, {z64: b"wake"})
        listening.join()
        assert woken == [tid]
    finally:
        twin.close()


def test_pack_removes_old_revisions_and_unreachable_objects(storage):
    kept, orphan = storage.new_oid(), storage.new_oid()
    commit(storage, {z64: b"->" + kept + orphan, kept: b"k1", orphan: b"o"})
    commit(storage, {kept: b"k2"})
    packed_at = commit(storage, {z64: b"->" + kept})
    later = storage.new_oid()
    commit(storage, {later: b"written after the pack tid"})

    def references(data: bytes) -> list[tuple[None, bytes]]:
        body = data[2:] if data.startswith(b"->") else b""
        return [(None, body[i : i + 8]) for i in range(0, len(body), 8)]

    stats = pack_storage(storage, packed_at, references=references)
    assert stats.objects_removed == 1
    view = storage.open_view()
    assert view.load(kept)[0] == b"k2" and view.load(later)[0] == b"written after the pack tid"
    with pytest.raises(POSKeyError):
        view.load(orphan)
    assert len(storage) == 3
    if storage.keep_history:
        assert [e.tid for e in storage.history(z64, 10)] == [packed_at]
    # history-preserving: the orphan's revision and the first revisions of root and kept
    assert stats.revisions_removed == (3 if storage.keep_history else 1)
    view.release()


def test_pack_without_references_keeps_every_object(storage):
    orphan = storage.new_oid()
    commit(storage, {z64: b"root", orphan: b"o"})
    tid = commit(storage, {z64: b"root2"})
    stats = pack_storage(storage, tid, collect=False)
    assert stats.objects_removed == 0
    assert len(storage) == 2


def test_pack_vacuums_and_reports_the_size(storage):
    from test_contract import record, references

    oids = [storage.new_oid() for _ in range(50)]
    commit(storage, {z64: record("root"), **{o: record("x" * 1000) for o in oids}})
    stats = pack_storage(storage, storage.last_transaction(), references=references)
    assert stats.objects_removed == 50
    assert stats.size_before > 0 and stats.size_after == storage.get_size()




def test_another_process_whose_oid_block_a_restore_wrote_into_never_replaces_a_restored_object(storage):
    """It took its block before the restore and was not told; its commit of a new
    object with such an oid is refused (the one-round-trip write sees the oid epoch
    moved and writes nothing; the check under the lock finds the oid taken), and the
    oids it takes after come from a new block."""
    from atoll.ids import new_tid
    from atoll.storage.base import DataRecord, TransactionRecord

    other = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history)
    try:
        first = u64(other.new_oid())  # its block starts here; the restore writes the next oids
        tid = new_tid(storage.last_transaction())
        restored = [p64(first + i) for i in range(1, 6)]
        storage.restore_transactions(
            [TransactionRecord(tid, "", "", {}, [DataRecord(oid, tid, b"restored") for oid in restored])]
        )
        for attempt in range(2):
            clash = other.new_oid()
            if attempt == 0:
                assert clash in restored  # handed out from the stale block: nothing told it yet
            view = other.open_view()  # its snapshot holds the restore: its poll reports nothing
            view.tpc_begin(TransactionMeta())
            view.store(clash, z64, b"a new object")
            if clash in restored:
                with pytest.raises(ConflictError):
                    view.tpc_vote()
                view.tpc_abort()
            else:
                view.tpc_vote()
                view.tpc_finish()
            view.release()
        assert u64(clash) > first + 5  # the second oid came from a new block
        check = storage.open_view()
        assert all(check.load(oid)[0] == b"restored" for oid in restored)
        check.release()
    finally:
        other.close()


def test_an_oid_taken_before_a_restore_is_checked_after_another_commit_noticed_it(storage):
    from atoll.ids import new_tid
    from atoll.storage.base import DataRecord, TransactionRecord

    other = type(storage)(postgres_dsn(), schema=storage.schema, keep_history=storage.keep_history)
    try:
        early = [other.new_oid() for _ in range(3)]  # taken before the restore writes them
        tid = new_tid(storage.last_transaction())
        storage.restore_transactions(
            [TransactionRecord(tid, "", "", {}, [DataRecord(oid, tid, b"restored") for oid in early])]
        )
        first = other.open_view()  # notices the restore at its commit, which creates nothing
        commit(other, {early[0]: b"changed"}, view=first)
        first.release()
        second = other.open_view()
        second.tpc_begin(TransactionMeta())
        second.store(early[1], z64, b"would replace a restored object")
        with pytest.raises(ConflictError):
            second.tpc_vote()
        second.tpc_abort()
        assert second.load(early[1])[0] == b"restored"
        second.release()
    finally:
        other.close()
