"""The default :meth:`Storage.restore_transactions`: over the protocol every storage
has, so every backend can take a copy's transactions; SQLite writes many in one write
transaction instead (:mod:`atoll.storage.sqlite_restore`)."""

from __future__ import annotations

from operator import attrgetter
from typing import Iterable

from atoll.ids import z64
from atoll.storage.base import DELETED, DataRecord, Storage, TransactionMeta, TransactionRecord

__all__ = ["restore_over_views", "last_of_each_oid", "BATCH_BYTES", "BATCH_TRANSACTIONS"]

#: A copy writes the source's transactions in batches of about this many bytes of
#: records (so memory stays flat however long the history) ...
BATCH_BYTES = 4 << 20
#: ... or this many transactions (so an interrupted copy loses little and progress
#: moves): atoll.collection.copy's batches and SQLite's own (sqlite_copy).
BATCH_TRANSACTIONS = 500

_oid = attrgetter("oid")


def last_of_each_oid(records: list[DataRecord]) -> list[DataRecord]:
    """``records`` of one transaction with each oid once, its last record kept.

    ZODB's FileStorage writes an oid twice in one transaction when one undo takes
    back several transactions that changed it (``undoMultiple``): the last record is
    the revision, as its loads say. A restore writes one revision per oid and
    transaction. Costs one set of the oids when there is no repeat (the rule)."""
    if len(set(map(_oid, records))) == len(records):
        return records
    return list({record.oid: record for record in records}.values())


def restore_over_views(storage: Storage, transactions: Iterable[TransactionRecord]) -> int:
    """:meth:`Storage.restore_transactions` over the protocol every storage has: one
    two-phase commit of a view per transaction, with the tid it asks for
    (:attr:`TransactionMeta.tid`), reading the serial each record replaces from
    the view's snapshot just before. Each commit is atomic, so a failure leaves
    the transactions before it."""
    view = storage.open_view()
    written = 0
    try:
        for record in transactions:
            view.poll()  # the snapshot is the last transaction: nothing to check against
            current = view.load_many([r.oid for r in record.records])
            stores = {
                r.oid: (current[r.oid][1] if r.oid in current else z64, DELETED if r.data is None else r.data)
                for r in record.records
            }
            meta = TransactionMeta(
                user=record.user, description=record.description, extension=record.extension, tid=record.tid
            )
            view.tpc_begin(meta)
            try:
                view.store_many(stores)
                view.tpc_vote()
                view.tpc_finish()
            except BaseException:
                view.tpc_abort()
                raise
            written += sum(len(data) for _, data in stores.values())
    finally:
        view.close()
    return written
