"""Backing up a live SQLite database file: SQLite's online backup API, from one snapshot.

The copy is made page by page from a connection that holds a read transaction, so
it is the database as of one moment, while other connections and processes go on
committing (in WAL mode readers never block writers, and a backup that reads
through an open read transaction is not restarted by their commits). It is written
to ``DESTINATION.partial`` and renamed into place when complete, so an interrupted
backup never leaves a file that looks whole.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import ExitStack
from typing import Sequence

from atoll.errors import StorageError
from atoll.progress import Progress, Reporter
from atoll.storage import sqlite_sql as sql
from atoll.storage.sqlite_open import BUSY_TIMEOUT

__all__ = ["backup_files"]

#: Pages copied per step: small enough for a progress bar, big enough to be cheap.
PAGES_PER_STEP = 1024


def _open_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    return conn


def backup_files(
    pairs: Sequence[tuple[str, str]], *, progress: Progress | None = None, lock_writers: bool = False
) -> list[int]:
    """Copy each ``(source_path, destination_path)`` file; returns the bytes written.

    With ``lock_writers`` (several files of one collection), writers of every file
    are held off (SQLite's write lock, taken in the order given, which must be the
    collections' commit order) just while a read snapshot of each file is taken,
    so the copies hold the same committed transactions; the copying itself runs
    with writers going on. A destination that exists is refused.
    """
    for _, destination in pairs:
        if os.path.exists(destination):
            raise StorageError(f"backup destination {destination} exists: give a new file name")
    with ExitStack() as stack:
        readers = []
        lockers: list[sqlite3.Connection] = []
        try:
            if lock_writers:
                for source, _ in pairs:
                    locker = sqlite3.connect(source, timeout=BUSY_TIMEOUT, isolation_level=None)
                    stack.callback(locker.close)
                    locker.execute(sql.BEGIN_WRITE)
                    lockers.append(locker)
            for source, _ in pairs:
                reader = _open_reader(source)
                stack.callback(reader.close)
                reader.execute(sql.BEGIN_READ)
                reader.execute(sql.SELECT_LAST_TID).fetchone()  # the first read fixes the snapshot
                readers.append(reader)
        except sqlite3.Error as e:
            raise StorageError(f"cannot start a backup of {source}: {e}") from None
        finally:
            for locker in lockers:
                try:
                    locker.execute(sql.ROLLBACK)
                except sqlite3.Error:
                    pass
        written = []
        for reader, (source, destination) in zip(readers, pairs):
            written.append(_copy(reader, source, destination, progress))
            reader.execute(sql.COMMIT)
        return written


def _copy(reader: sqlite3.Connection, source: str, destination: str, progress: Progress | None) -> int:
    partial = destination + ".partial"
    if os.path.exists(partial):
        os.remove(partial)  # left by an interrupted backup: never a whole file
    report: Reporter | None = None

    def step(status: int, remaining: int, total: int) -> None:
        nonlocal report
        if report is None:
            report = Reporter(progress, f"backing up {os.path.basename(source)}", total=total, unit="pages", every=1)
        report.advance(total - remaining - report.count)

    target = sqlite3.connect(partial, isolation_level=None)
    try:
        reader.backup(target, pages=PAGES_PER_STEP, progress=step, sleep=0)
        target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        target.close()
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, destination)
        _fsync_folder(os.path.dirname(os.path.abspath(destination)))
    except (sqlite3.Error, OSError) as e:
        target.close()
        if os.path.exists(partial):
            os.remove(partial)
        raise StorageError(f"backup of {source} into {destination} failed: {e}") from None
    size = os.path.getsize(destination)
    if report is not None:
        report.done(f"backed up {source} into {destination}: {size:,} bytes")
    return size


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
