"""In-memory storages: fast, thread-safe, gone when the process ends.

:class:`MemoryStorage` keeps every revision until pack (history-preserving);
:class:`MinimalMemoryStorage` keeps only what open views can still read, which is
what a history-free storage must do to stay MVCC-correct.

Records live in this process's memory as immutable ``bytes``: nothing can damage
them between a store and a load, so these storages keep no checksums and
:meth:`MemoryStorage.verify` only confirms that every revision is there.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left, bisect_right
from typing import Container, Iterable, Iterator, Sequence

from atoll import gcpause
from atoll.errors import POSKeyError, ReadConflictError, ReadOnlyError, StorageError, StorageTransactionError
from atoll.ids import ROOT_OID, p64, tid_time, u64, z64
from atoll.storage.base import (
    verify_step,
    commit_tid,
    Storage,
    StorageView,
    DamagedRecord,
    DataRecord,
    HistoryEntry,
    PackSession,
    Progress,
    PackStats,
    Resolver,
    TransactionInfo,
    TransactionMeta,
    TransactionRecord,
    check_metadata_key,
    commit_key,
)
from atoll.storage.commit_buffer import CommitBuffer, moved_serials

__all__ = ["MemoryStorage", "MinimalMemoryStorage", "MemoryPackSession"]


class _Revisions:
    """The revisions of one object, oldest first: parallel lists for bisect."""

    __slots__ = ("tids", "datas")

    def __init__(self) -> None:
        self.tids: list[bytes] = []
        self.datas: list[bytes] = []  # DELETED (empty): the object ended there

    def at(self, snapshot: bytes) -> int:
        """Index of the newest revision with tid <= snapshot, or -1."""
        return bisect_right(self.tids, snapshot) - 1


class MemoryStorage(Storage):
    """A history-preserving storage held in this process's memory."""

    keep_history = True

    def __init__(self, name: str = "memory", *, read_only: bool = False) -> None:
        self.name = name
        self.read_only = read_only
        self._lock = threading.RLock()  # guards every structure below
        self._commit_lock = threading.Lock()  # held from tpc_vote to finish/abort
        self._objects: dict[bytes, _Revisions] = {}
        self._tids: list[bytes] = []  # committed tids, ascending
        self._tx_oids: dict[bytes, list[bytes]] = {}  # tid -> oids it wrote
        self._tx_meta: dict[bytes, TransactionMeta] = {}
        self._last_tid = z64
        self._last_pack = z64  # the newest pack's tid
        self._next_oid = 1  # 0 is the root
        self._views: weakref.WeakSet[MemoryView] = weakref.WeakSet()
        self._metadata: dict[str, str] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.name!r} is closed")

    def _advance_oids(self, oids: Iterable[bytes]) -> None:
        """Move the oid counter past every oid of a commit (under ``_lock``): an oid
        that new_oid() never handed out (a copy, an import) is never handed out later."""
        highest = max(oids, default=None)
        if highest is not None and u64(highest) >= self._next_oid:
            self._next_oid = u64(highest) + 1

    # -- the Storage protocol ------------------------------------------------

    def open_view(self, before: bytes | None = None) -> MemoryView:
        self._check_open()
        view = MemoryView(self, before)
        with self._lock:
            self._views.add(view)
        return view

    def new_oid(self) -> bytes:
        self._check_open()
        # Called while a commit serializes, with the garbage collector paused: a
        # wait for the lock (a pack holds it throughout) lets it run.
        gcpause.acquire(self._lock)
        try:
            oid = p64(self._next_oid)
            self._next_oid += 1
        finally:
            self._lock.release()
        return oid

    def last_transaction(self) -> bytes:
        return self._last_tid

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        with self._lock:
            revisions = self._objects.get(oid)
            if revisions is None or not revisions.tids:
                raise POSKeyError(oid)
            entries: list[HistoryEntry] = []
            for tid, data in zip(reversed(revisions.tids), reversed(revisions.datas)):
                if len(entries) >= size:
                    break
                meta = self._tx_meta.get(tid, TransactionMeta())
                entries.append(HistoryEntry(tid, tid_time(tid), meta.user, meta.description, len(data or b"")))
            return entries

    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[TransactionRecord]:
        with self._lock:
            lo = 0 if start is None else bisect_left(self._tids, start)
            tids = [t for t in self._tids[lo:] if stop is None or t <= stop]
        for tid in tids:
            with self._lock:
                meta = self._tx_meta.get(tid)
                oids = self._tx_oids.get(tid)
                if meta is None or oids is None:
                    continue  # packed away meanwhile
                records = []
                for oid in oids:
                    revisions = self._objects.get(oid)
                    if revisions is None:
                        continue
                    i = revisions.at(tid)
                    if i >= 0 and revisions.tids[i] == tid:
                        records.append(DataRecord(oid, tid, revisions.datas[i] or None))
            yield TransactionRecord(tid, meta.user, meta.description, dict(meta.extension), records)

    def pack_session(self, pack_tid: bytes) -> MemoryPackSession:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        return MemoryPackSession(self, pack_tid)

    def get_metadata(self) -> dict[str, str]:
        with self._lock:
            return dict(self._metadata)

    def set_metadata(self, key: str, value: str) -> None:
        check_metadata_key(key)
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"storage {self.name} is read-only")
        with self._lock:
            self._metadata[key] = str(value)

    def vacuum(self) -> int:
        """Nothing to give back: removed records are freed when pack drops them."""
        return self.get_size()

    def verify(self, progress: Progress | None = None) -> list[DamagedRecord]:
        """Nothing to find: records are immutable bytes in memory (see the module docstring)."""
        self._check_open()
        with self._lock:
            damaged = [
                DamagedRecord(self.name, oid, tid, f"revision is a {type(data).__name__}, not bytes")
                for oid, revisions in self._objects.items()
                for tid, data in zip(revisions.tids, revisions.datas)
                if data is not None and not isinstance(data, bytes)
            ]
            count = sum(len(r.tids) for r in self._objects.values())
        if progress is not None:
            progress(verify_step(self.name, count, len(damaged), finished=True))
        return damaged

    def transaction_log(self, before: bytes | None = None, limit: int = 100) -> list[TransactionInfo]:
        self._check_open()
        with self._lock:
            end = len(self._tids) if before is None else bisect_left(self._tids, before)
            infos = []
            for tid in reversed(self._tids[max(0, end - limit) : end]):
                meta = self._tx_meta[tid]
                size = 0
                for oid in self._tx_oids[tid]:
                    revisions = self._objects.get(oid)
                    if revisions is not None:
                        i = revisions.at(tid)
                        if i >= 0 and revisions.tids[i] == tid:
                            size += len(revisions.datas[i])
                infos.append(
                    TransactionInfo(tid, meta.user, meta.description, dict(meta.extension), commit_key(meta.id), size)
                )
            return infos

    def last_pack(self) -> bytes:
        return self._last_pack

    def note_pack(self, pack_tid: bytes) -> None:
        self._check_open()
        self._last_pack = max(self._last_pack, pack_tid)

    def find_transactions(
        self, keys: Iterable[str], low: bytes | None = None, high: bytes | None = None
    ) -> dict[str, bytes]:
        self._check_open()
        wanted = set(keys) - {""}
        found: dict[str, bytes] = {}
        with self._lock:
            lo = 0 if low is None else bisect_left(self._tids, low)
            hi = len(self._tids) if high is None else bisect_right(self._tids, high)
            for tid in self._tids[lo:hi]:
                key = commit_key(self._tx_meta[tid].id)
                if key in wanted:
                    found[key] = tid
        return found

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for r in self._objects.values() if r.datas and r.datas[-1])

    def get_size(self) -> int:
        with self._lock:
            return sum(len(d) for r in self._objects.values() for d in r.datas if d)

    def sort_key(self) -> str:
        return f"memory:{self.name}:{id(self):x}"

    def decision_home(self) -> None:
        """None: what this storage holds ends with the process, so it cannot keep a
        collection's decision, and its part of a commit is not crash-safe."""
        return None

    def close(self) -> None:
        self._closed = True

    # -- used by views, under self._lock -------------------------------------

    def _forget_empty_transactions(self, stats: PackStats) -> None:
        live = set()
        for revisions in self._objects.values():
            live.update(revisions.tids)
        for tid in list(self._tx_oids):
            if tid not in live and tid != self._last_tid:
                del self._tx_oids[tid]
                self._tx_meta.pop(tid, None)
                stats.transactions_removed += 1
        self._tids = [t for t in self._tids if t in self._tx_oids]

    def _changed_since(self, snapshot: bytes, upto: bytes, own: set[bytes]) -> set[bytes]:
        changed: set[bytes] = set()
        for tid in self._tids[bisect_right(self._tids, snapshot) :]:
            if tid > upto:
                break
            if tid not in own:
                changed.update(self._tx_oids[tid])
        return changed

    def _commit(self, tid: bytes, meta: TransactionMeta, writes: dict[bytes, bytes]) -> None:
        for oid, data in writes.items():
            revisions = self._objects.get(oid)
            if revisions is None:
                revisions = self._objects[oid] = _Revisions()
            revisions.tids.append(tid)
            revisions.datas.append(data)
        self._tids.append(tid)
        self._tx_oids[tid] = list(writes)
        self._tx_meta[tid] = meta
        self._last_tid = tid
        if not self.keep_history:
            self._prune(writes)

    def _prune(self, oids: Iterable[bytes]) -> None:
        """History-free: drop revisions and transactions no open view can read."""
        oldest = min((v.snapshot for v in self._views if v.before is None and v.snapshot), default=self._last_tid)
        for oid in oids:
            revisions = self._objects[oid]
            i = revisions.at(oldest)
            if i > 0:
                del revisions.tids[:i]
                del revisions.datas[:i]
        cut = bisect_right(self._tids, oldest) - 1
        if cut > 0:
            for tid in self._tids[:cut]:
                del self._tx_oids[tid]
                del self._tx_meta[tid]
            del self._tids[:cut]


class MinimalMemoryStorage(MemoryStorage):
    """The smallest correct storage: in memory, history-free (no history, no undo).

    Old revisions are kept only while an open view's snapshot can still read them.
    """

    keep_history = False

    def history(self, oid: bytes, size: int = 1) -> list[HistoryEntry]:
        """The current revision only: no other is kept."""
        return super().history(oid, 1)


class MemoryPackSession(PackSession):
    """A pack of a :class:`MemoryStorage` (see :class:`~atoll.storage.base.PackSession`)."""

    def __init__(self, storage: MemoryStorage, pack_tid: bytes) -> None:
        self.pack_tid = pack_tid
        self._storage = storage
        # new_revisions has returned revisions up to this tid (see SQLitePackSession)
        self._reported = min(pack_tid, storage._last_tid)
        self._locked = False

    def new_revisions(self) -> Iterator[tuple[int, bytes]]:
        storage = self._storage
        found = []
        with storage._lock:
            after = self._reported
            for oid, revisions in storage._objects.items():
                for tid, data in zip(reversed(revisions.tids), reversed(revisions.datas)):
                    if tid <= after:
                        break
                    if data:  # None or DELETED (b"") refer to nothing
                        found.append((u64(oid), data))
            self._reported = max(after, storage._last_tid)
        return iter(found)

    def states(self, oids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        storage = self._storage
        found = []
        with storage._lock:
            objects, history = storage._objects, storage.keep_history
            for oid in oids:
                revisions = objects.get(p64(oid))
                if revisions is None or not revisions.tids:
                    continue
                i = revisions.at(self.pack_tid) if history else len(revisions.tids) - 1
                if i >= 0 and revisions.datas[i]:
                    found.append((oid, revisions.datas[i]))
        return iter(found)

    def lock(self) -> None:
        self._storage._check_open()
        if not self._locked:
            self._storage._commit_lock.acquire()
            self._locked = True

    def sweep(self, keep: Container[int] | None) -> PackStats:
        storage = self._storage
        stats = PackStats(size_before=storage.get_size())
        pack_tid = self.pack_tid
        try:
            with storage._lock:
                for oid in list(storage._objects):
                    revisions = storage._objects[oid]
                    i = revisions.at(pack_tid)
                    written_later = i < len(revisions.tids) - 1
                    if keep is not None and not written_later and u64(oid) not in keep:
                        stats.revisions_removed += len(revisions.tids)
                        stats.objects_removed += 1
                        del storage._objects[oid]
                        continue
                    if i > 0 and storage.keep_history:
                        stats.revisions_removed += i
                        del revisions.tids[:i]
                        del revisions.datas[:i]
                storage._forget_empty_transactions(stats)
                storage._last_pack = max(storage._last_pack, pack_tid)
        finally:
            self.close()
        stats.size_after = storage.get_size()
        return stats

    def close(self) -> None:
        if self._locked:
            self._locked = False
            self._storage._commit_lock.release()


class MemoryView(CommitBuffer, StorageView):
    """A connection's view of a :class:`MemoryStorage`."""

    _storage: MemoryStorage

    def __init__(self, storage: MemoryStorage, before: bytes | None) -> None:
        self._storage = storage
        self.before = before
        if before is None:
            self.snapshot = storage._last_tid
        else:
            self.snapshot = p64(u64(before) - 1) if before != z64 else z64
        self._own: set[bytes] = set()  # tids this view committed since its last poll
        self._reset_buffer()
        self._tid: bytes | None = None  # allocated in vote
        self._locked = False

    def poll(self) -> set[bytes] | None:
        if self.before is not None:
            return set()
        storage = self._storage
        with storage._lock:
            upto = storage._last_tid
            if self.snapshot != z64 and self.snapshot not in storage._tx_oids and self.snapshot < upto:
                # Pruned past our snapshot (history-free storage, view left idle).
                oldest = storage._tids[0] if storage._tids else upto
                if oldest > self.snapshot:
                    self.snapshot, self._own = upto, set()
                    return None
            changed = storage._changed_since(self.snapshot, upto, self._own)
        self.snapshot, self._own = upto, set()
        return changed

    def load(self, oid: bytes) -> tuple[bytes, bytes]:
        return self._load(oid)

    def _load(self, oid: bytes) -> tuple[bytes, bytes]:
        storage = self._storage
        with storage._lock:
            revisions = storage._objects.get(oid)
            if revisions is not None:
                i = revisions.at(self.snapshot)
                if i >= 0:
                    data = revisions.datas[i]
                    if data:  # an empty record ends the object (undone creation)
                        return data, revisions.tids[i]
                elif revisions.tids and not storage.keep_history:
                    raise ReadConflictError(
                        "the revision this snapshot needs was already discarded", oid=oid
                    )
        raise POSKeyError(oid)

    def load_many(self, oids: Iterable[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        found = {}
        for oid in oids:
            try:
                found[oid] = self._load(oid)
            except POSKeyError:
                pass
        return found

    def load_serial(self, oid: bytes, serial: bytes) -> bytes:
        with self._storage._lock:
            revisions = self._storage._objects.get(oid)
            if revisions is not None:
                i = revisions.at(serial)
                if i >= 0 and revisions.tids[i] == serial and revisions.datas[i]:
                    return revisions.datas[i]
        raise POSKeyError(oid)

    def new_oid(self) -> bytes:
        return self._storage.new_oid()

    def tpc_vote(self, resolve: Resolver | None = None) -> set[bytes]:
        meta = self._check_voting()
        storage = self._storage
        storage._commit_lock.acquire()
        self._locked = True
        with storage._lock:
            objects = storage._objects

            def committed(oid: bytes) -> bytes:
                revisions = objects.get(oid)
                if revisions is not None and revisions.tids and revisions.datas[-1]:
                    return revisions.tids[-1]
                return z64

            def moved() -> dict[bytes, bytes]:
                return moved_serials(self._stores, self._checks, committed)

            resolved = self._resolve_conflicts(storage._last_tid, moved, lambda oid: objects[oid].datas[-1], resolve)
            self._tid = commit_tid(meta, storage._last_tid)
            storage._advance_oids(self._stores)
        return resolved

    def tpc_finish(self) -> bytes:
        if self._tid is None or self._meta is None:
            raise StorageTransactionError("tpc_finish before tpc_vote")
        tid, storage = self._tid, self._storage
        with storage._lock:
            storage._commit(tid, self._meta, {oid: data for oid, (_, data) in self._stores.items()})
        self._own.add(tid)
        self._reset()
        return tid

    def tpc_abort(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._reset_buffer()
        self._tid = None
        if self._locked:
            self._locked = False
            self._storage._commit_lock.release()

    def release(self) -> None:
        self._reset()
        with self._storage._lock:
            self._storage._views.discard(self)

    def close(self) -> None:
        """Release the view; it holds nothing else (see :meth:`StorageView.close`)."""
        self.release()
