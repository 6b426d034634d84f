"""The record cache shared by a storage's views (storage/cache.py)."""

from __future__ import annotations

from atoll.errors import ReadConflictError
from atoll.ids import ROOT_OID, p64, z64
from atoll.storage.cache import FREEZE_BYTES, RecordCache
from test_contract import commit, payload, record

T1, T2, T3 = p64(10), p64(20), p64(30)
X, Y = p64(1), p64(2)


def test_entry_serves_snapshots_between_its_serial_and_the_cache_tid():
    cache = RecordCache()
    cache.advance(T2, T2, set())
    cache.put(X, b"x1", T1, T2)
    assert cache.get(X, T2) == (b"x1", T1)
    assert cache.get(X, p64(15)) == (b"x1", T1)
    assert cache.get(X, p64(5)) is None  # before the revision was written
    assert cache.get(X, T3) is None  # after what the cache has checked


def test_put_from_another_snapshot_is_ignored():
    cache = RecordCache()
    cache.advance(T2, T2, set())
    cache.put(X, b"x1", T1, T1)
    assert cache.get(X, T2) is None


def test_advance_drops_changed_oids_and_moves_on():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.put(X, b"x1", T1, T1)
    cache.put(Y, b"y1", T1, T1)
    cache.advance(T1, T2, {X})
    assert cache.tid == T2
    assert cache.get(X, T2) is None
    assert cache.get(Y, T2) == (b"y1", T1)


def test_a_gap_after_the_cache_tid_empties_it():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.put(Y, b"y1", T1, T1)
    cache.advance(T2, T3, set())  # changes between T1 and T2 were never reported
    assert cache.get(Y, T3) is None and cache.tid == T3


def test_unknown_changes_empty_it():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.put(Y, b"y1", T1, T1)
    cache.advance(T1, T2, None)
    assert len(cache) == 0


def test_own_commit_is_dropped_again_when_the_cache_passes_it():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.invalidate([X], T2)  # this process committed X at T2
    cache.put(X, b"x-old", T1, T1)  # a reader at T1 puts back the old revision
    assert cache.get(X, T1) == (b"x-old", T1)  # right for T1
    cache.advance(T1, T3, set())  # the committer's poll leaves its own commit out
    assert cache.get(X, T3) is None


def test_eviction_keeps_the_byte_budget():
    cache = RecordCache(max_bytes=1000)
    cache.advance(T1, T1, set())
    for i in range(100):
        cache.put(p64(i + 1), b"x" * 100, T1, T1)
    assert len(cache) == 10
    assert cache.get(p64(100), T1) is not None and cache.get(p64(1), T1) is None


def test_put_many_fills_segments_in_turn_and_keeps_the_byte_budget():
    cache = RecordCache(max_bytes=16_000)  # segments of 1,000 bytes
    cache.advance(T1, T1, set())
    cache.put_many({p64(i + 1): (bytes([i]) * 300, T1) for i in range(10)}, T1)
    assert len(cache._segments) == 4  # three records fit a segment
    assert cache.get(p64(4), T1) == (bytes([3]) * 300, T1)
    cache.put_many({p64(99): (b"big" * 2000, T1)}, T1)  # over a quarter of the budget
    assert cache.get(p64(99), T1) is None
    cache.put_many({p64(100 + i): (bytes([i]) * 300, T1) for i in range(60)}, T1)
    assert cache._bytes <= 16_000
    assert cache.get(p64(159), T1) == (bytes([59]) * 300, T1) and cache.get(p64(1), T1) is None
    cache.put_many({p64(200): (b"stale", T1)}, p64(5))  # read at another snapshot
    assert cache.get(p64(200), T1) is None


def test_a_batch_of_mixed_sizes_reads_back_whole_across_segments():
    cache = RecordCache(max_bytes=16_000)  # segments of 1,000 bytes
    cache.advance(T1, T1, set())
    sizes = [1, 999, 500, 501, 1000, 7, 4001, 250, 250, 250, 250, 2]
    batch = {p64(i + 1): (bytes([i + 1]) * size, p64(1 + i % 9)) for i, size in enumerate(sizes)}
    cache.put_many(batch, T1)
    assert 4001 > 16_000 // 4 and cache.get(p64(7), T1) is None  # too big: left out
    del batch[p64(7)]
    found, missing = cache.get_many(list(batch), T1)
    assert not missing and found == batch
    assert all(len(segment) <= 1000 for segment in cache._segments.values())
    assert cache._bytes == sum(len(data) for data, _ in batch.values())


def test_a_cache_of_no_bytes_keeps_nothing():
    cache = RecordCache(max_bytes=0)
    cache.advance(T1, T1, set())
    cache.put_many({X: (b"x", T1), Y: (b"y", T1)}, T1)
    assert len(cache) == 0 and cache.get_many([X, Y], T1) == ({}, [X, Y])


def test_a_segment_read_from_is_frozen_and_later_records_go_to_a_new_one():
    cache = RecordCache(max_bytes=64 * FREEZE_BYTES)
    cache.advance(T1, T1, set())
    records = {p64(i + 1): bytes([i % 251]) * 1000 for i in range(2 * FREEZE_BYTES // 1000)}
    for oid, data in records.items():
        cache.put(oid, data, T1, T1)
    assert all(type(segment) is bytearray for segment in cache._segments.values())
    first = next(iter(records))
    assert cache.get(first, T1) == (records[first], T1)
    frozen = [n for n, segment in cache._segments.items() if type(segment) is bytes]
    assert frozen == [next(iter(cache._segments))] and len(cache._segments) == 1
    cache.put(p64(10**6), b"new", T1, T1)
    assert len(cache._segments) == 2  # the frozen segment takes no more records
    records[p64(10**6)] = b"new"
    found, missing = cache.get_many(list(records), T1)
    assert not missing and found == {oid: (data, T1) for oid, data in records.items()}


def test_a_small_segment_is_read_without_freezing():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.put(X, b"x", T1, T1)
    assert cache.get(X, T1) == (b"x", T1)
    cache.put(p64(99), b"y", T1, T1)
    assert len(cache._segments) == 1 and type(cache._segments[0]) is bytearray


def test_no_view_reads_a_revision_replaced_by_a_commit_of_its_own_process(storage):
    """The race of test_own_commit_is_dropped_again..., through real views."""
    writer, reader = storage.open_view(), storage.open_view()
    oid = storage.new_oid()
    t1 = commit(writer, {ROOT_OID: (z64, record("root", oid)), oid: (z64, record("old"))})
    reader.poll()
    writer.poll()
    commit(writer, {oid: (t1, record("new"))})
    try:
        assert payload(reader.load(oid)[0]) == "old"  # the reader's snapshot predates it
    except ReadConflictError:
        assert not storage.keep_history  # a history-free file keeps no old revision
    writer.poll()
    assert payload(writer.load(oid)[0]) == "new"
    assert payload(storage.open_view().load(oid)[0]) == "new"
    reader.poll()
    assert payload(reader.load(oid)[0]) == "new"


def test_a_second_view_reads_from_the_shared_cache(storage):
    records = getattr(storage, "_records", None)
    writer = storage.open_view()
    oids = [storage.new_oid() for _ in range(5)]
    commit(writer, {ROOT_OID: (z64, record("root", *oids)), **{o: (z64, record(i)) for i, o in enumerate(oids)}})
    first = storage.open_view()
    assert [payload(first.load(o)[0]) for o in oids] == list(range(5))
    second = storage.open_view()
    if records is not None and not records.max_bytes:  # a storage told to keep none
        assert [payload(d) for d, _ in second.load_many(oids).values()] == list(range(5))
        assert len(records) == 0 and records.hits == 0
    elif records is not None:
        hits = records.hits
        assert [payload(d) for d, _ in second.load_many(oids).values()] == list(range(5))
        assert records.hits == hits + 5
    else:  # memory storages keep everything in memory already
        assert len(second.load_many(oids)) == 5


def test_records_this_process_committed_are_cached_once_the_cache_reaches_their_tid():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.put(X, b"x1", T1, T1)
    cache.committed({X: b"x2", Y: b"y2"}, T2)
    assert cache.get(X, T1) is None  # the replaced revision went at once
    cache.put(X, b"x1", T1, T1)  # a reader at T1 puts it back ...
    cache.advance(T1, T3, set())  # ... and the poll that passes T2 leaves our commit out
    assert cache.get(X, T3) == (b"x2", T2) and cache.get(Y, T3) == (b"y2", T2)


def test_a_committed_record_another_process_replaced_meanwhile_is_not_cached():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.committed({X: b"x2", Y: b"y2"}, T2)
    cache.advance(T1, T3, {Y})  # someone wrote Y after us, at T3
    assert cache.get(X, T3) == (b"x2", T2)
    assert cache.get(Y, T3) is None


def test_committed_records_are_not_cached_after_a_clear():
    cache = RecordCache()
    cache.advance(T1, T1, set())
    cache.committed({X: b"x2"}, T2)
    cache.clear()  # a pack may have removed them
    cache.advance(T1, T3, set())
    assert cache.get(X, T3) is None
