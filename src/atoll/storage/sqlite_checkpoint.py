"""Checkpointing an SQLite storage's write-ahead log off the commit path.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint* copies them
back into the database file and fsyncs it, so the log can start over. SQLite's
default runs one inside whichever commit pushes the log past 1,000 pages, so that
commit pays for copying every earlier one (measured: 20% of a 10,000-object update).

The storage turns that off on its writer (``PRAGMA wal_autocheckpoint = 0``) and
calls :meth:`Checkpointer.wrote` after each commit instead. Once about
:data:`CHECKPOINT_BYTES` were written, a background thread with its own sqlite3
connection runs a ``PASSIVE`` checkpoint: it copies what no reader still needs,
waits for no one, and runs while the process goes on (sqlite3 releases the GIL).
Crash safety is SQLite's: a checkpoint that stops halfway is redone from the log
when the file is next opened.

Under a steady stream of small commits the thread never quite catches up: commits
land while it copies, and SQLite starts the log over only once every frame is
copied when a writer begins (and no reader still reads from it). A log that only
grows costs every commit: each fsync of an appended log also writes the file's new
size, which made a 1-object commit about 2x slower (measured). So after each
background run, :meth:`Checkpointer.finish` (called by the next commit on the
writer, after its ``COMMIT`` and still holding the commit lock, so that no commit
lands in between) copies the few frames logged since, and the log starts over at
the commit after that. When the storage closes, the thread stops, and
SQLite's own close checkpoints whatever is left.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Callable

__all__ = ["Checkpointer", "CHECKPOINT_BYTES"]

log = logging.getLogger(__name__)

#: Bytes of records committed between two checkpoints: about SQLite's default of
#: 1,000 pages of log.
CHECKPOINT_BYTES = 4 << 20

# "main.": a copy attaches its source to the writer, and a checkpoint without a
# schema would try that read-only file's log too (an I/O error while it has frames).
CHECKPOINT = "PRAGMA main.wal_checkpoint(PASSIVE)"
#: Bytes a bulk writer (a copy) writes between two of its :meth:`Checkpointer.finish`.
BULK_FINISH_BYTES = 64 << 20
#: Checkpoint runs, at most, to catch up with the commits made during the first.
CATCH_UP = 4
#: What a commit adds to the log besides its records: about three pages (the
#: transactions row, the revision's table and index leaves) and their frame headers.
COMMIT_OVERHEAD = 3 * 4120


class Checkpointer:
    """Runs WAL checkpoints of one file in a background thread (started on first use).

    ``connect()`` makes the thread's sqlite3 connection; it is called in the thread.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], every_bytes: int = CHECKPOINT_BYTES) -> None:
        self._connect = connect
        self._every = every_bytes
        self._written = 0  # bytes committed since the last checkpoint was asked for
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.checkpoints = 0  # completed checkpoint runs, for tests and curiosity
        self._behind = False  # a run ended since the last finish(): frames may be left
        self._running = False
        self._ran = threading.Condition()  # notified when a background run ends
        self._bulk_written = 0  # bytes written by bulk writers since their last finish

    def request(self) -> None:
        """Start a checkpoint now (after a pack, say)."""
        self.wrote(self._every)

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written by a commit; start a checkpoint when enough were."""
        with self._lock:
            self._written += nbytes + COMMIT_OVERHEAD
            if self._written < self._every or self._stopping:
                return
            self._written = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="atoll-sqlite-checkpoint", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        conn = None
        try:
            conn = self._connect()
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                # A checkpoint copies the frames logged when it started; commits
                # go on meanwhile. The log starts over (and stops growing) only
                # once a checkpoint copied every frame, so a short second run
                # copies what came in during the first.
                self._running = True
                try:
                    for _ in range(CATCH_UP):
                        _, logged, copied = conn.execute(CHECKPOINT).fetchone()
                        if copied >= logged or self._stopping:
                            break
                    self._behind = True
                finally:
                    with self._ran:
                        self._running = False
                        self._ran.notify_all()
                self.checkpoints += 1
        except sqlite3.Error as e:
            # A failed checkpoint loses nothing: the log keeps every page and SQLite
            # checkpoints it when the file is next closed or opened. The next request
            # starts a new thread, so a passing failure does not let the log grow.
            log.warning("background WAL checkpoint stopped: %s", e)
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def finish(self, writer: sqlite3.Connection) -> None:
        """Copy what was logged since the last background run, on ``writer``
        (outside any transaction, holding the commit lock), so that the log can
        start over; nothing unless a run ended since the last call. A failure only
        leaves the log to the next run."""
        if not self._behind or self._running or self._stopping:
            return
        self._behind = False
        _checkpoint(writer, "after commit")

    def finish_in_bulk(self, writer: sqlite3.Connection, nbytes: int) -> None:
        """For a writer of large batches (a copy's), after a batch of ``nbytes``
        (on ``writer``, outside any transaction, holding the commit lock): once every
        :data:`BULK_FINISH_BYTES` written, wait for a background run in progress to
        end and copy what it left, so that the log starts over at the next batch
        instead of growing as large as the whole copy (which it did: batches come
        faster than background runs catch up). Not after every batch, as a commit
        does: that cost a 33 MB copy 0.1 s in 0.9."""
        self._bulk_written += nbytes
        if self._bulk_written < BULK_FINISH_BYTES or self._stopping:
            return
        with self._ran:  # two checkpoints of one file cannot run at once: the second is "busy"
            while self._running and not self._stopping:
                self._ran.wait(1.0)
        if _checkpoint(writer, "after a copy's batch"):
            self._bulk_written = 0
            self._behind = False

    def stop(self) -> None:
        """Stop the thread, after the checkpoint it is running (if any) ends."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join()


def _checkpoint(writer: sqlite3.Connection, when: str) -> bool:
    """A PASSIVE checkpoint on ``writer``; False if another checkpoint of the file
    was running (busy). A failure is logged: the log keeps every page, for the
    next run."""
    try:
        return not writer.execute(CHECKPOINT).fetchone()[0]
    except sqlite3.Error as e:
        log.warning("WAL checkpoint %s: %s", when, e)
        return True
