"""ZODB FileStorage files (``Data.fs``) as a copy's source or destination.

Through ZODB's own FileStorage, which is an optional extra (``pip install
'atoll[zodb]'``): atoll never depends on ZODB otherwise. Records are exchanged as
they are (atoll writes ZODB's record format), tids kept; ZODB's user and description
are bytes, atoll's text: they are decoded as UTF-8 and encoded back, byte for byte
(bytes that are not UTF-8 survive the round trip as surrogate escapes).
"""

from __future__ import annotations

import os
from functools import partial
from operator import attrgetter
from typing import Any, Iterator

from atoll.errors import StorageError
from atoll.ids import z64
from atoll.storage.base import DELETED, DataRecord, TransactionRecord

__all__ = ["FileStorageReader", "FileStorageWriter"]


def _filestorage() -> Any:
    try:
        import ZODB.FileStorage
    except ImportError:
        raise StorageError(
            "reading or writing a ZODB FileStorage (.fs) needs ZODB: pip install 'atoll[zodb]'"
        ) from None
    return ZODB.FileStorage


_data_record = partial(tuple.__new__, DataRecord)  # DataRecord(*fields), without Python's __new__
_fields = attrgetter("oid", "tid", "data")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class FileStorageReader:
    """The transactions of a ``Data.fs``, oldest first, as atoll's TransactionRecords."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise StorageError(f"no ZODB FileStorage at {path}: give the path of an existing Data.fs")
        module = _filestorage()
        self.name = path
        try:
            self._storage = module.FileStorage(path, read_only=True)
        except Exception as e:
            raise StorageError(f"{path} is not a ZODB FileStorage: {e}") from None

    def transactions(self, start: bytes | None) -> Iterator[TransactionRecord]:
        """The file's transactions from ``start`` (all when None), oldest first."""
        iterator = self._storage.iterator(start)
        try:
            for txn in iterator:
                # ZODB's records carry their transaction's tid: made in C calls only. An
                # oid listed twice (one undo of several transactions) stays so: every
                # restore keeps its last record (atoll.storage.restore.last_of_each_oid).
                records = list(map(_data_record, map(_fields, txn)))
                yield TransactionRecord(txn.tid, _text(txn.user), _text(txn.description), dict(txn.extension), records)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def has_transaction(self, tid: bytes) -> bool:
        """Whether the file holds the transaction ``tid``."""
        return any(record.tid == tid for record in self.transactions(tid))

    def count_after(self, start: bytes | None) -> int | None:
        """How many transactions from ``start``: not known without reading them all."""
        return None

    def last_pack(self) -> bytes | None:
        """Not known: a FileStorage keeps no mark of its packs."""
        return None

    def close(self) -> None:
        """Close the FileStorage."""
        self._storage.close()


class FileStorageWriter:
    """Commits transactions into a ``Data.fs`` with their tids (ZODB's ``restore``)."""

    def __init__(self, path: str) -> None:
        module = _filestorage()
        from ZODB.Connection import TransactionMetaData

        self._meta_class = TransactionMetaData
        self.name = path
        try:
            self._storage = module.FileStorage(path, create=not os.path.exists(path))
        except Exception as e:
            raise StorageError(f"cannot open {path} as a ZODB FileStorage: {e}") from None

    def last_transaction(self) -> bytes:
        """The tid of the file's newest transaction (``z64`` when empty)."""
        return self._storage.lastTransaction() or z64

    def write(self, record: TransactionRecord) -> int:
        """Commit ``record`` with its tid; returns the bytes of record data written."""
        storage = self._storage
        meta = self._meta_class(_bytes(record.user), _bytes(record.description), dict(record.extension))
        storage.tpc_begin(meta, record.tid)
        written = 0
        try:
            for data_record in record.records:
                data = data_record.data
                if data == DELETED:
                    data = None
                storage.restore(data_record.oid, record.tid, data, "", None, meta)
                written += len(data or b"")
            storage.tpc_vote(meta)
            storage.tpc_finish(meta)
        except BaseException:
            storage.tpc_abort(meta)
            raise
        return written

    def write_batch(self, records: list[TransactionRecord]) -> int:
        """:meth:`write` each of ``records`` in turn (each commit whole)."""
        return sum(self.write(record) for record in records)

    def finish(self) -> None:
        """Nothing to do: FileStorage makes each commit durable itself."""

    def note_pack(self, pack_tid: bytes) -> None:
        """Nothing to record: a FileStorage keeps no mark of its packs (ZODB's undo
        finds a missing revision itself)."""

    def close(self) -> None:
        """Close the FileStorage."""
        self._storage.close()
