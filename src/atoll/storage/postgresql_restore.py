"""Many transactions in one PostgreSQL transaction: the PostgreSQL storage's
:meth:`~atoll.storage.base.Storage.restore_transactions`, what a copy writes.

The default, one view commit per transaction, costs a poll, the commit lock and a
flushed ``COMMIT`` per transaction. Here a batch is one PostgreSQL transaction under
the commit lock: each source transaction still gets its own ``transactions`` row,
tid and revisions, written by the statement a view's commit writes
(``WRITE_COMMIT_HP``/``_HF`` in :mod:`atoll.storage.postgresql_sql`, its NOTIFY
included), and the batch commits as a unit, so an error, a lost session or a crash
leaves none of it, and a restarted copy continues after the last transaction
committed before.

No conflict check: the records replace whatever is current (history-free, the row
of each oid is overwritten, as a commit's is). Tids are checked to increase from the
schema's last tid, read under the commit lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import psycopg

from atoll.errors import ReadOnlyError, StorageError
from atoll.ids import p64, u64
from atoll.storage import postgresql_recovery as recovery
from atoll.storage.base import TransactionMeta, TransactionRecord, commit_tid
from atoll.storage.checksum import checksum as record_checksum
from atoll.storage.postgresql_session import _first_line, one_value
from atoll.storage.restore import last_of_each_oid

if TYPE_CHECKING:
    from atoll.storage.postgresql import PostgreSQLStorage

__all__ = ["restore_transactions"]


def restore_transactions(storage: PostgreSQLStorage, transactions: Iterable[TransactionRecord]) -> int:
    """See :meth:`Storage.restore_transactions` and the module docstring; returns
    the bytes of record data written."""
    storage._check_open()
    if storage.read_only:
        raise ReadOnlyError(f"storage {storage.name} is read-only")
    q = storage._sql
    write = q.WRITE_COMMIT_HP if storage.keep_history else q.WRITE_COMMIT_HF
    keep_for_cache = bool(storage._records.max_bytes)
    cached: list[tuple[int, dict[bytes, bytes | None]]] = []
    oids_written: set[bytes] = set()
    written, highest, epoch = 0, -1, None
    session = storage._checkout()
    conn = session.conn
    try:
        try:
            last = storage._lock_commit(conn)
            for record in transactions:
                meta = TransactionMeta(extension=record.extension, tid=record.tid)
                tid = u64(commit_tid(meta, p64(last) if last else None))
                revisions = last_of_each_oid(record.records)
                zoids = [u64(r.oid) for r in revisions]
                datas = [r.data or None for r in revisions]  # DELETED: NULL
                conn.execute(write, {
                    "tid": tid, "zoids": zoids, "datas": datas,
                    "sums": [record_checksum(zoid, tid, data) for zoid, data in zip(zoids, datas)],
                    "user": record.user, "description": record.description,
                    "extension": meta.extension_bytes(), "txn_key": recovery.txn_key(None),
                    "decision": None, "channel": storage._channel,
                })
                written += sum(len(data) for data in datas if data)
                if zoids:
                    highest = max(highest, *zoids)
                oids_written.update(r.oid for r in revisions)
                if keep_for_cache:
                    cached.append((tid, {r.oid: r.data or b"" for r in revisions}))  # DELETED: b""
                last = tid
            if highest >= storage._oid_limit:  # else within this process's block
                conn.execute(q.ADVANCE_OIDS, {"oid": highest})
            epoch = one_value(conn.execute(q.BUMP_OID_EPOCH)) if oids_written else None
            # Before the COMMIT: once it is in, a new_oid() of another thread must not
            # hand out one of these from this process's block.
            storage._skip_oids_of(oids_written)
            try:
                conn.execute("COMMIT")
            except psycopg.Error:
                # Committed or not (a lost answer): the batch may hold oids of this
                # process's reserved block, so give the rest of the block up.
                with storage._lock:
                    storage._give_up_oid_block()
                raise
        except psycopg.Error as e:
            raise StorageError(f"PostgreSQL error in {storage.name} restoring transactions: {_first_line(e)}") from None
    finally:
        storage._checkin(session)  # rolls back whatever is left open
    # Committed: what a view's tpc_finish does after its COMMIT, for each transaction.
    for tid, records in cached:
        storage._records.committed(records, p64(tid))
    if epoch is not None:  # this process's own block was seen to just above
        with storage._lock:
            storage._oid_epoch = epoch
    return written
