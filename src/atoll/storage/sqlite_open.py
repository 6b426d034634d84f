"""Opening an SQLite file for :class:`~atoll.storage.sqlite.SQLiteStorage`.

The checks a path passes before anything touches it (a regular file, writable
unless read-only, its folder there), the sqlite3 connections the storage makes,
and the schema: a new file gets its tables, an existing one must be an atoll
database of a version and history mode this code can use; an older version is
upgraded on a writable open (:func:`migrate`). A refused file is never written to.

Read-only media: a read-only open of a file whose folder this process cannot
write fails in SQLite, which wants to create the ``-shm`` file of WAL mode beside
it. :func:`read_only_media` then switches to SQLite's ``immutable`` read path, or
says why it cannot (a ``-wal`` file holding commits not yet copied into the file).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from urllib.parse import quote

from atoll.errors import StorageError
from atoll.storage import sqlite_sql as sql
from atoll.storage.sqlite_write import write_transaction

__all__ = ["BUSY_TIMEOUT", "check_path", "connect", "open_schema", "read_meta", "migrate", "read_only_media"]

log = logging.getLogger("atoll.storage.sqlite")

#: Seconds a commit waits for a lock by default (the storage's commit_lock_timeout):
#: this process's commit lock, then the file's write lock (another process's commit).
BUSY_TIMEOUT = 60.0


def check_path(path: str, read_only: bool) -> bool:
    """Refuse a path that cannot be a storage's file; True if it must be created."""
    if os.path.isdir(path):
        raise StorageError(f"{path} is a directory, not an SQLite database file")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise StorageError(f"{path} is not a regular file")
        if not read_only and not _writable(path):
            raise StorageError(f"{path} is read-only; open it with read_only=True")
        folder = os.path.dirname(path)
        if not read_only and not os.access(folder, os.W_OK):
            raise StorageError(
                f"cannot write {path}: its folder {folder} is read-only, and SQLite writes its log "
                "beside the file; open it with read_only=True"
            )
        return False
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise StorageError(f"cannot create {path}: folder {folder} does not exist")
    if read_only:
        raise StorageError(f"{path} does not exist (read-only mode creates nothing)")
    if not os.access(folder, os.W_OK):
        raise StorageError(f"cannot create {path}: folder {folder} is not writable")
    return True


def _writable(path: str) -> bool:
    # A file without any write bit counts as read-only even for root, who could
    # write it: the owner has said it must not change.
    mode = os.stat(path).st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def connect(
    path: str, read_only: bool, create: bool = False, *, timeout: float = BUSY_TIMEOUT, immutable: bool = False
) -> sqlite3.Connection:
    """A new sqlite3 connection to the file, in autocommit mode (we BEGIN ourselves);
    ``timeout`` bounds its waits for another process's lock, ``immutable`` reads a
    file on read-only media (see the module docstring)."""
    mode = "ro" if read_only else ("rwc" if create else "rw")
    uri = f"file:{quote(path)}?mode={mode}"
    if immutable:
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StorageError(f"cannot open {path}: {e}") from None
    return conn


def read_only_media(path: str, read_only: bool, error: sqlite3.Error) -> None:
    """Whether a failed first read of ``path`` should be retried through SQLite's
    immutable path: returns if so, raises StorageError saying why not otherwise."""
    name = getattr(error, "sqlite_errorname", "")
    if not (read_only and name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))):
        raise StorageError(f"{path} is not an SQLite database ({error})") from None
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise StorageError(
            f"cannot read {path} here: its folder is not writable ({error}), and its write-ahead log {wal} "
            f"holds commits not yet copied into the file, which SQLite can read only with a {path}-shm file "
            "beside it; open it once where its folder is writable (closing it copies the log into the file), "
            "then it opens read-only anywhere"
        ) from None
    log.info("%s: folder not writable; reading the file through SQLite's immutable mode", path)


def open_schema(conn: sqlite3.Connection, path: str, read_only: bool, keep_history: bool) -> int:
    """Check the file is an atoll database this code can use, creating the tables in
    a new (empty) one, and return its schema version (older ones are migrated by the
    caller). Nothing is written to a file that is refused."""
    try:
        tables = conn.execute(sql.COUNT_TABLES).fetchone()[0]
        app_id = conn.execute(sql.SELECT_APPLICATION_ID).fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StorageError(f"{path} is not an SQLite database ({e})") from None
    if app_id not in (0, sql.APPLICATION_ID):
        raise StorageError(
            f"{path} belongs to another application (SQLite application_id {app_id:#x}, atoll's is "
            f"{sql.APPLICATION_ID:#x})"
        )
    if tables == 0:
        if read_only:
            raise StorageError(f"{path} is an empty SQLite database, not an atoll database")
        _create_schema(conn, keep_history)
    meta = read_meta(conn, path)
    version = int(meta.get("schema_version", 0))
    if version > sql.SCHEMA_VERSION:
        raise StorageError(
            f"{path} has atoll schema version {version}, newer than this atoll supports "
            f"({sql.SCHEMA_VERSION}): upgrade atoll to open it"
        )
    if version < 1:
        raise StorageError(f"{path} has an invalid atoll schema version {meta.get('schema_version')!r}")
    file_history = bool(int(meta.get("keep_history", 1)))
    if file_history != keep_history:
        raise StorageError(
            f"{path} was created with keep_history={file_history}; open it with keep_history={file_history}"
        )
    if not read_only and conn.execute(sql.SELECT_JOURNAL_MODE).fetchone()[0].lower() != "wal":
        conn.execute(sql.SET_WAL)
    return version


def migrate(conn: sqlite3.Connection, path: str, version: int) -> None:
    """Bring a file of an older schema version up to this one, in one transaction."""
    try:
        with write_transaction(conn):
            current = int(dict(conn.execute(sql.SELECT_META).fetchall())["schema_version"])
            while current < sql.SCHEMA_VERSION:  # another process may have done it meanwhile
                for statement in sql.MIGRATIONS[current]:
                    conn.execute(statement)
                current += 1
                conn.execute(sql.UPDATE_SCHEMA_VERSION, (current,))
                conn.execute(sql.SET_USER_VERSION.format(version=current))
    except sqlite3.Error as e:
        raise StorageError(f"cannot upgrade {path} from atoll schema version {version}: {e}") from None
    log.info("%s: upgraded from atoll schema version %d to %d", path, version, sql.SCHEMA_VERSION)


def read_meta(conn: sqlite3.Connection, path: str) -> dict[str, str | int | float | bytes]:
    """The file's ``meta`` table (its values have no declared type, and are never
    NULL), refusing a file of another application."""
    if not conn.execute(sql.HAS_META_TABLE).fetchone()[0]:
        raise StorageError(f"{path} is an SQLite database of another application (it has no atoll tables)")
    meta = dict(conn.execute(sql.SELECT_META).fetchall())
    if meta.get("application") != sql.APPLICATION_NAME:
        raise StorageError(f"{path} is an SQLite database of another application")
    return meta


def _create_schema(conn: sqlite3.Connection, keep_history: bool) -> None:
    conn.execute(sql.SET_AUTO_VACUUM_INCREMENTAL)  # before any table, outside a transaction
    conn.execute(sql.SET_WAL)  # persistent in the file; must be outside a transaction
    with write_transaction(conn):
        # Another process may have created the tables since we looked.
        if conn.execute(sql.COUNT_TABLES).fetchone()[0] == 0:
            for statement in sql.CREATE_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                sql.INSERT_META,
                [
                    ("application", sql.APPLICATION_NAME),
                    ("schema_version", sql.SCHEMA_VERSION),
                    ("keep_history", int(keep_history)),
                    ("next_oid", 1),  # 0 is the root
                ],
            )
