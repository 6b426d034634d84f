"""Every SQL statement of :mod:`atoll.storage.sqlite`, in one place.

The file format (schema version 3)
----------------------------------

``PRAGMA application_id`` is :data:`APPLICATION_ID` ("ATOL") and ``PRAGMA
user_version`` the schema version, so ``file(1)`` and other tools can tell an atoll
file at a glance; the ``atoll_meta`` table repeats both (plus the history mode and
the oid counter) where a query can see them.

Oids and tids are stored as INTEGER: the 8-byte big-endian values read as unsigned
numbers (:func:`atoll.ids.u64`). Every oid handed out and every tid of the next few
thousand years is below 2**63, so they fit SQLite's signed 64-bit integers and keep
their order.

``object_state``
    One row per revision: ``(zoid, tid, state, checksum)``; ``checksum`` is
    :func:`atoll.storage.checksum.checksum` of the row, NULL in rows written before
    version 2 (unchecked). A history-preserving file keeps
    every revision until pack; a history-free file deletes the older revisions of an
    object in the transaction that writes a new one. Rows are appended in rowid
    order and found through ``object_state_by_oid`` ("the newest revision at or
    before a snapshot" is one index seek). Clustering the table on ``(zoid, tid)``
    instead loads no faster but makes a commit that rewrites many objects dirty
    every page of the table (measured: 4x the commit time). There is no index by
    tid: it would cost every commit another insert per object, and
    ``transactions.oids`` answers the same questions.
``transactions``
    One row per committed transaction with its metadata; ``extension`` is
    :meth:`TransactionMeta.extension_bytes`, ``txn_id`` the id shared by the storages
    of one multi-database commit, ``oids`` the oids it wrote, as concatenated 8-byte
    big-endian values (what ``poll()`` reports and iteration reads), ``partners``
    the number of other SQLite files its commit was prepared with (NULL before
    version 2). Pack removes rows whose revisions are all gone, except the newest,
    which holds the last tid; a history-free file does the same every
    :data:`PRUNE_EVERY` commits (:data:`PRUNE_REPLACED_TRANSACTIONS`).
``atoll_meta``
    ``application`` = ``'atoll'``, ``schema_version``, ``keep_history`` (1 or 0),
    ``next_oid``, the first oid no storage instance has been given yet, and, once the
    file was packed, ``last_pack``, the newest pack tid (undo refuses transactions
    at or before it: the revisions they replaced may be gone); ``ended_objects``
    once a commit wrote an empty state (an undone creation: see COUNT_ENDED_OBJECTS);
    and the values of :meth:`Storage.set_metadata`, whose keys are dotted names
    (``collection.name``) and so never collide with these.
``commit_pending`` (schema version 3)
    A part of a collection's commit that this file prepared (see
    :mod:`atoll.storage.sqlite_pending`): its revisions are in ``object_state``
    under ``tid``, but no ``transactions`` row names that tid yet, so no snapshot
    includes it. The row holds what that ``transactions`` row will hold, the
    ``decider``'s home and when it was prepared.
``commit_decisions`` (schema version 3)
    The collection commits this file decided: ``txn_id`` -> ``tid`` and the time
    (see :mod:`atoll.storage.decisions`).

Files of versions 1 and 2 (no commit tables) gain them on their first writable
open. A new file has ``auto_vacuum = INCREMENTAL``, so that a pack can give the
pages it frees back to the file system in a short write transaction
(``sqlite_pack.vacuum``).

A later release that changes the schema raises :data:`SCHEMA_VERSION` and migrates
files whose version is lower (:data:`MIGRATIONS`, on a writable open); a file whose
version is higher is refused. A version 1 file opened read-only is read as it is,
without checksums (:func:`reads`).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

#: "ATOL" as a big-endian 32-bit integer: PRAGMA application_id of every atoll file.
APPLICATION_ID = 0x41544F4C
#: The schema version this code reads and writes.
SCHEMA_VERSION = 3
#: The value of the ``application`` row in ``atoll_meta``.
APPLICATION_NAME = "atoll"

# -- schema ------------------------------------------------------------------

CREATE_SCHEMA = f"""
CREATE TABLE atoll_meta (
    key   TEXT PRIMARY KEY,
    value NOT NULL
) WITHOUT ROWID;

CREATE TABLE transactions (
    tid         INTEGER PRIMARY KEY,
    username    TEXT NOT NULL,
    description TEXT NOT NULL,
    extension   BLOB NOT NULL,
    txn_id      TEXT NOT NULL,
    oids        BLOB NOT NULL,
    partners    INTEGER
);

CREATE TABLE object_state (
    id       INTEGER PRIMARY KEY,
    zoid     INTEGER NOT NULL,
    tid      INTEGER NOT NULL,
    state    BLOB NOT NULL,
    checksum INTEGER
);

CREATE UNIQUE INDEX object_state_by_oid ON object_state (zoid, tid);
{{commit_tables}}
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

#: The tables of the collection commit protocol (schema version 3).
CREATE_COMMIT_TABLES = """
CREATE TABLE IF NOT EXISTS commit_pending (
    tid         INTEGER PRIMARY KEY,
    txn_id      TEXT NOT NULL,
    decider     TEXT NOT NULL,
    prepared_at REAL NOT NULL,
    username    TEXT NOT NULL,
    description TEXT NOT NULL,
    extension   BLOB NOT NULL,
    oids        BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS commit_decisions (
    txn_id     TEXT PRIMARY KEY,
    tid        INTEGER NOT NULL,
    decided_at REAL NOT NULL
) WITHOUT ROWID;
"""

CREATE_SCHEMA = CREATE_SCHEMA.replace("{commit_tables}", CREATE_COMMIT_TABLES)

#: Schema upgrades: version -> statements that turn that version into the next (in
#: one write transaction, with the version rows updated after them).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE object_state ADD COLUMN checksum INTEGER",
        "ALTER TABLE transactions ADD COLUMN partners INTEGER",
    ),
    2: tuple(part for part in CREATE_COMMIT_TABLES.split(";") if part.strip()),
}
SET_USER_VERSION = "PRAGMA user_version = {version}"
UPDATE_SCHEMA_VERSION = "UPDATE atoll_meta SET value = ? WHERE key = 'schema_version'"

INSERT_META = "INSERT INTO atoll_meta (key, value) VALUES (?, ?)"
SELECT_META = "SELECT key, value FROM atoll_meta"
#: Tables in the file: an empty file (no tables) becomes a new atoll database.
COUNT_TABLES = "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
HAS_META_TABLE = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'atoll_meta'"
SELECT_APPLICATION_ID = "PRAGMA application_id"
SELECT_JOURNAL_MODE = "PRAGMA journal_mode"
SET_WAL = "PRAGMA journal_mode = WAL"
#: Durability of the writer's commits: "FULL" or "NORMAL" (see sqlite.py's "Durability").
SET_SYNCHRONOUS = "PRAGMA synchronous = {mode}"
#: The writer leaves checkpoints to a background thread (sqlite_checkpoint.py).
NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = 0"
#: The commit writer's page cache, at most 32 MiB (SQLite's default is 2 MiB): a commit
#: that replaces 100,000 revisions touches index pages all over the file, and with
#: 2 MiB it re-reads them (1.3 against 0.9 µs per row; the commit then writes more).
WRITER_CACHE = "PRAGMA cache_size = -32768"

# -- oids --------------------------------------------------------------------

SELECT_NEXT_OID = "SELECT value FROM atoll_meta WHERE key = 'next_oid'"
UPDATE_NEXT_OID = "UPDATE atoll_meta SET value = ? WHERE key = 'next_oid'"
#: A commit that stores oids beyond the counter (a copy, an import) moves it past them.
ADVANCE_NEXT_OID = "UPDATE atoll_meta SET value = ?1 WHERE key = 'next_oid' AND value < ?1"

# -- reads at a snapshot -----------------------------------------------------

SELECT_LAST_TID = "SELECT max(tid) FROM transactions"

# The statements that read records are in _READS (below), with the checksum column.

#: Does the oid have any revision at all (to tell "not yet/never" from "gone")?
HAS_REVISION = "SELECT 1 FROM object_state WHERE zoid = ? LIMIT 1"


#: What transactions after a snapshot wrote, oldest first: a poll's one statement.
COMMITTED_AFTER = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid"

# -- commit ------------------------------------------------------------------

BEGIN_READ = "BEGIN DEFERRED"
BEGIN_WRITE = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

#: Given a JSON array of [oid, expected serial] pairs (0: no revision), the pairs
#: whose oid's current serial is another: (oid, current serial or NULL). Conflicts
#: are rare, so the common answer is no row at all.
SERIAL_MISMATCHES = """
SELECT oid, current FROM (
    SELECT json_extract(j.value, '$[0]') AS oid,
           json_extract(j.value, '$[1]') AS expected,
           (SELECT max(tid) FROM object_state
            WHERE zoid = json_extract(j.value, '$[0]')) AS current
    FROM json_each(?) AS j
)
WHERE coalesce(current, 0) != expected
"""


#: The writer's first statement of a commit: the last tid, and whether a prepared
#: part waits to be settled (sqlite_pending.py) before anything else is written.
LAST_TID_AND_PENDING = """
SELECT (SELECT max(tid) FROM transactions), EXISTS (SELECT 1 FROM commit_pending),
       (SELECT value FROM atoll_meta WHERE key = 'oid_epoch')
"""

#: A write of oids that no new_oid() handed out (a copy's, a restore's) bumps the
#: ``oid_epoch``: a process whose oid block predates it may hold some of those oids
#: (see SQLiteStorage._check_oid_epoch).
BUMP_OID_EPOCH = """
INSERT INTO atoll_meta (key, value) VALUES ('oid_epoch', 1)
ON CONFLICT (key) DO UPDATE SET value = value + 1
"""
SELECT_OID_EPOCH = "SELECT value FROM atoll_meta WHERE key = 'oid_epoch'"

# -- the collection commit protocol (sqlite_pending.py, decisions.py) --------

HAS_PENDING_TABLE = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'commit_pending'"
HAS_DECISIONS_TABLE = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'commit_decisions'"
SELECT_PENDING = "SELECT tid, txn_id, decider, prepared_at FROM commit_pending ORDER BY tid"
PENDING_OIDS = "SELECT oids FROM commit_pending WHERE tid = ?"
INSERT_PENDING = """
INSERT INTO commit_pending (tid, txn_id, decider, prepared_at, username, description, extension, oids)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
#: A prepared part becomes a committed transaction.
PENDING_TO_TRANSACTION = """
INSERT INTO transactions (tid, username, description, extension, txn_id, oids, partners)
SELECT tid, username, description, extension, txn_id, oids, 0 FROM commit_pending WHERE tid = ?
"""
DELETE_PENDING = "DELETE FROM commit_pending WHERE tid = ?"
#: A dropped prepared part's revisions.
DELETE_STATES_OF = "DELETE FROM object_state WHERE tid = ?"
HAS_TRANSACTION = "SELECT 1 FROM transactions WHERE tid = ?"
INSERT_DECISION = "INSERT INTO commit_decisions (txn_id, tid, decided_at) VALUES (?, ?, ?)"
SELECT_DECISION = "SELECT tid FROM commit_decisions WHERE txn_id = ?"
PRUNE_DECISIONS = "DELETE FROM commit_decisions WHERE decided_at < ?"

INSERT_TRANSACTION = """
INSERT INTO transactions (tid, username, description, extension, txn_id, oids, partners)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""

#: Rows per INSERT statement of a commit: one statement with many VALUES rows costs
#: about 60% of executemany's per-row price (measured with 10,000 rows). 200 rows
#: bind 601 parameters, below the smallest limit SQLite builds use (999).
STATES_PER_INSERT = 200

# The multi-row INSERTs of revisions (these two, and a copy's COPY_REVISIONS) say
# OR ROLLBACK: a statement that writes several rows and may stop halfway on a
# constraint (OR ABORT, the default) keeps a statement journal, a copy of every
# existing page it changes, to undo itself. Revisions of existing objects change
# pages all over the (zoid, tid) index: 50 of them took 394 us in one such INSERT,
# 119 us with OR ROLLBACK (and 156 us one row per statement). No commit breaks these constraints unless something is wrong; a
# broken one ends the whole write transaction. Without a statement journal another
# error partway (a blob too big, say) leaves the statement's earlier rows in the
# transaction: every caller rolls the transaction back after any error, and must.
_INSERT_REVISIONS = "INSERT OR ROLLBACK INTO object_state (zoid, tid, state, checksum) VALUES "


@functools.lru_cache(maxsize=None)
def insert_states(rows: int) -> str:
    """INSERT of ``rows`` revisions of one transaction.

    Parameters: the tid, then ``zoid, state, checksum`` for each row."""
    return _INSERT_REVISIONS + ", ".join(f"(?{3 * i + 2}, ?1, ?{3 * i + 3}, ?{3 * i + 4})" for i in range(rows))


@functools.lru_cache(maxsize=None)
def insert_revisions(rows: int) -> str:
    """INSERT of ``rows`` revisions of any transactions (what a restore writes).

    Parameters: ``zoid, tid, state, checksum`` for each row (200 rows bind 800)."""
    return _INSERT_REVISIONS + ", ".join(["(?, ?, ?, ?)"] * rows)


#: Commits between two prunings of a history-free file's replaced transaction rows.
PRUNE_EVERY = 1000

#: History-free: the transaction rows whose revisions were all replaced. ``?1`` is the
#: last tid (its row stays: it holds the last tid), ``?2`` the oldest tid whose row
#: a partner file may still ask about (a prepared commit's, see sqlite_prepared.py).
PRUNE_REPLACED_TRANSACTIONS = """
DELETE FROM transactions
WHERE tid < ?1 AND (partners = 0 OR tid < ?2)
  AND tid NOT IN (SELECT DISTINCT tid FROM object_state)
"""
COUNT_TRANSACTIONS = "SELECT count(*) FROM transactions"


#: History-free commits drop the revisions their new ones replace.
DELETE_OLDER_REVISIONS = "DELETE FROM object_state WHERE zoid = ? AND tid < ?"

# -- whole-storage reads -----------------------------------------------------

HISTORY = """
SELECT s.tid, length(s.state), t.username, t.description
FROM object_state AS s
LEFT JOIN transactions AS t ON t.tid = s.tid
WHERE s.zoid = ?
ORDER BY s.tid DESC
LIMIT ?
"""

#: A page of transactions for the iterator: tids after the last one seen.
TRANSACTIONS_PAGE = """
SELECT tid, username, description, extension, oids FROM transactions
WHERE tid > ? AND tid <= ?
ORDER BY tid
LIMIT ?
"""


COUNT_OBJECTS = "SELECT count(*) FROM (SELECT DISTINCT zoid FROM object_state)"

#: Objects whose newest revision ends them (DELETED, an undone creation), which
#: COUNT_OBJECTS counts too. A scan of the table, so ``len()`` runs it only in a file
#: where a commit wrote one (``atoll_meta`` then holds ``ended_objects``).
COUNT_ENDED_OBJECTS = """
SELECT count(*) FROM object_state AS d
WHERE length(d.state) = 0 AND d.tid = (SELECT max(tid) FROM object_state WHERE zoid = d.zoid)
"""
HAS_ENDED_OBJECTS = "SELECT 1 FROM atoll_meta WHERE key = 'ended_objects'"
MARK_ENDED_OBJECTS = "INSERT OR IGNORE INTO atoll_meta (key, value) VALUES ('ended_objects', 1)"

# -- pack (sqlite_pack.py) --------------------------------------------------

#: A page of the transactions after a tid: what they wrote is kept, and the
#: collector follows its references (a commit after the pack tid may link an object
#: that was unreachable at it).
TRANSACTIONS_AFTER_PAGE = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid LIMIT ?"

#: Objects whose newest revision is at or before the pack tid: candidates for GC.
OBJECTS_NOT_WRITTEN_AFTER = "SELECT zoid FROM object_state GROUP BY zoid HAVING max(tid) <= ?"

#: Every revision of the objects of a JSON array of oids.
DELETE_OBJECTS = "DELETE FROM object_state WHERE zoid IN (SELECT value FROM json_each(?))"

#: Revisions older than their object's newest revision at the pack tid.
DELETE_OLD_REVISIONS = """
DELETE FROM object_state
WHERE tid < ?1
  AND tid < (SELECT max(s.tid) FROM object_state AS s
             WHERE s.zoid = object_state.zoid AND s.tid <= ?1)
"""

#: Transactions none of whose revisions remain, except the newest (the last tid).
#: SQLite builds the set of live tids once (one pass over the table) for NOT IN.
DELETE_EMPTY_TRANSACTIONS = """
DELETE FROM transactions
WHERE tid < (SELECT max(tid) FROM transactions)
  AND tid NOT IN (SELECT tid FROM object_state)
"""

# -- giving space back -------------------------------------------------------

SELECT_AUTO_VACUUM = "PRAGMA auto_vacuum"
AUTO_VACUUM_INCREMENTAL = 2
SET_AUTO_VACUUM_INCREMENTAL = "PRAGMA auto_vacuum = INCREMENTAL"
INCREMENTAL_VACUUM = "PRAGMA incremental_vacuum;"
VACUUM = "VACUUM"
SET_BUSY_TIMEOUT = "PRAGMA busy_timeout = {ms}"
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"

# -- metadata (Storage.get_metadata / set_metadata) --------------------------

#: Values written through set_metadata: dotted keys, apart from the file's own settings.
SELECT_APP_META = "SELECT key, value FROM atoll_meta WHERE key LIKE '%.%'"
UPSERT_META = "INSERT OR REPLACE INTO atoll_meta (key, value) VALUES (?, ?)"

# -- undo (sqlite_undo.py) ---------------------------------------------------

#: A page of the transaction log, newest first, below a tid.
TRANSACTIONS_BEFORE = """
SELECT tid, username, description, extension, txn_id, oids FROM transactions
WHERE tid < ? ORDER BY tid DESC LIMIT ?
"""

SELECT_LAST_PACK = "SELECT value FROM atoll_meta WHERE key = 'last_pack'"
#: Inside the pack's write transaction.
SET_LAST_PACK = """
INSERT INTO atoll_meta (key, value) VALUES ('last_pack', ?1)
ON CONFLICT (key) DO UPDATE SET value = max(value, ?1)
"""

#: The shared ids of the transactions in a range of tids.
TRANSACTION_IDS = "SELECT tid, txn_id FROM transactions WHERE tid >= ? AND tid <= ? AND txn_id != ''"

#: Bytes of record data a transaction wrote, given its oids (JSON).
SIZE_OF_TRANSACTION = """
SELECT coalesce(sum(length(s.state)), 0)
FROM json_each(?1) AS j
JOIN object_state AS s ON s.zoid = j.value AND s.tid = ?2
"""

# -- reading records (with their checksums) -------------------------------------

_READS = {
    #: (state, tid, checksum) of the newest revision of an oid at or before a snapshot.
    "LOAD_AT": """
SELECT state, tid, {checksum} FROM object_state
WHERE zoid = ? AND tid <= ?
ORDER BY tid DESC LIMIT 1
""",
    #: Like LOAD_AT for a JSON array of oids: one statement for a whole batch. The
    #: subquery finds the row id in the index (one seek, covering) and the join
    #: fetches the row by it: 15-20% faster than matching (zoid, max(tid)).
    "LOAD_MANY_AT": """
SELECT s.zoid, s.state, s.tid, {checksum}
FROM json_each(?1) AS j
JOIN object_state AS s
  ON s.id = (SELECT id FROM object_state WHERE zoid = j.value AND tid <= ?2 ORDER BY tid DESC LIMIT 1)
""",
    "LOAD_SERIAL": "SELECT state, {checksum} FROM object_state WHERE zoid = ? AND tid = ?",
    "LOAD_CURRENT": "SELECT state, tid, {checksum} FROM object_state WHERE zoid = ? ORDER BY tid DESC LIMIT 1",
    #: The revisions a transaction wrote that are still there, given its oids (JSON).
    "RECORDS_OF_TRANSACTION": """
SELECT s.zoid, s.state, {checksum}
FROM json_each(?1) AS j
JOIN object_state AS s ON s.zoid = j.value AND s.tid = ?2
""",
    #: verify(): a page of revisions in row order, after a row id.
    "VERIFY_PAGE": "SELECT id, zoid, tid, state, {checksum} FROM object_state WHERE id > ? ORDER BY id LIMIT ?",
}


@functools.lru_cache(maxsize=None)
def reads(checksums: bool = True) -> SimpleNamespace:
    """The statements that read records; ``checksums`` False reads NULL for the
    checksum (a version 1 file opened read-only, which has no such column)."""
    column = "checksum" if checksums else "NULL"
    return SimpleNamespace(**{name: text.replace("{checksum}", column) for name, text in _READS.items()})

# -- copying another atoll SQLite file (sqlite_copy.py) ----------------------

#: The source file, read-only, beside the destination's own tables.
ATTACH_COPY_SOURCE = "ATTACH DATABASE ? AS atoll_copy_source"
DETACH_COPY_SOURCE = "DETACH DATABASE atoll_copy_source"
COPY_SOURCE_LAST_TID = "SELECT max(tid) FROM atoll_copy_source.transactions"

#: The committed revisions to copy, by (tid, row id), with their oid and size: the
#: source has no index by tid, so one scan lists them and each batch reads its
#: range here. A prepared part's rows (no ``transactions`` row names their tid yet)
#: are left out.
CREATE_COPY_ROWS = """
CREATE TEMP TABLE atoll_copy_rows (
    tid  INTEGER NOT NULL,
    id   INTEGER NOT NULL,
    zoid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (tid, id)
) WITHOUT ROWID
"""
FILL_COPY_ROWS = """
INSERT INTO temp.atoll_copy_rows (tid, id, zoid, size)
SELECT s.tid, s.id, s.zoid, length(s.state)
FROM atoll_copy_source.object_state AS s
JOIN atoll_copy_source.transactions AS t ON t.tid = s.tid
WHERE s.tid > ?1 AND s.tid <= ?2
"""
DROP_COPY_ROWS = "DROP TABLE IF EXISTS temp.atoll_copy_rows"
CLEAR_COPY_ROWS = "DELETE FROM temp.atoll_copy_rows"

#: The next transactions' sizes (bytes, revisions), for choosing a batch.
COPY_SIZES = """
SELECT tid, sum(size), count(*) FROM temp.atoll_copy_rows
WHERE tid > ? GROUP BY tid ORDER BY tid LIMIT ?
"""
COPY_HAS_ENDED_ROWS = "SELECT 1 FROM temp.atoll_copy_rows WHERE size = 0 LIMIT 1"

#: One batch: the transactions with tids in (?1, ?2], then their revisions in the
#: order a commit inserts them, each one's checksum checked (or, for a revision
#: written before checksums, computed) by the ``atoll_copy_checksum`` function.
COPY_TRANSACTIONS = """
INSERT INTO transactions (tid, username, description, extension, txn_id, oids, partners)
SELECT tid, username, description, extension, '', oids, 0
FROM atoll_copy_source.transactions WHERE tid > ?1 AND tid <= ?2 ORDER BY tid
"""
COPY_REVISIONS = """
INSERT OR ROLLBACK INTO object_state (zoid, tid, state, checksum)
SELECT s.zoid, s.tid, s.state,
       atoll_copy_checksum(s.zoid, s.tid, CAST(s.state AS BLOB), typeof(s.state) = 'blob', s.checksum)
FROM temp.atoll_copy_rows AS r
JOIN atoll_copy_source.object_state AS s ON s.id = r.id AND s.zoid = r.zoid AND s.tid = r.tid
WHERE r.tid > ?1 AND r.tid <= ?2
ORDER BY r.tid, r.id
"""
#: What a batch wrote: the revisions after the destination's highest row id before it.
COPY_HIGHEST_ROW = "SELECT coalesce(max(id), 0) FROM object_state"
COPY_WRITTEN = "SELECT total(length(state)), min(zoid), max(zoid) FROM object_state WHERE id > ?"
#: History-free: the revisions a batch replaced (copied by an earlier round, before
#: the source replaced them), as a history-free commit deletes them.
COPY_DROP_REPLACED = """
DELETE FROM object_state
WHERE id <= ?1 AND zoid IN (SELECT zoid FROM object_state WHERE id > ?1)
"""
