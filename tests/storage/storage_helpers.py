"""Helpers the storage tests share (importable by name, also in worker processes)."""

from __future__ import annotations

from atoll.storage.base import StorageView, TransactionMeta


def commit(view: StorageView, writes: dict[bytes, tuple[bytes, bytes]], meta: TransactionMeta | None = None) -> bytes:
    """Commit ``oid -> (read_serial, data)`` through ``view``; returns the tid."""
    view.tpc_begin(meta or TransactionMeta())
    try:
        for oid, (serial, data) in writes.items():
            view.store(oid, serial, data)
        view.tpc_vote()
    except BaseException:
        view.tpc_abort()
        raise
    return view.tpc_finish()
