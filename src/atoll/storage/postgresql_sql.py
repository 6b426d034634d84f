"""Every SQL statement of the PostgreSQL storage: the schema and the named queries.

The storage's algorithm lives in :mod:`atoll.storage.postgresql`; this module only
holds text. Statements are ``str.format`` templates over ``{s}``, the storage's
quoted schema name, filled once when the storage opens (:func:`queries`), and use
psycopg ``%s``/``%(name)s`` placeholders for values. Oids and tids are stored as
``bigint`` (the 8-byte big-endian value read as an integer, always < 2**63).

Schema version 2 (version 1 lacked ``object_state.checksum``; opening a version 1
schema writable adds the column, and its older rows keep NULL: unchecked). One
PostgreSQL schema holds one atoll database:

``info(key, value)``
    ``schema_version``, ``keep_history``, ``oid_block`` (see :data:`OID_BLOCK`), and
    once packed ``last_pack``, the newest pack tid (undo refuses transactions at or
    before it).
``commit_lock(id, tid)``
    One row (id 0) holding the newest committed tid. Committers lock it
    ``FOR UPDATE``: that row lock *is* the commit lock, and because a prepared
    transaction keeps its row locks, it stays held from ``tpc_vote`` until
    ``COMMIT PREPARED``/``ROLLBACK PREPARED``, in whatever session finishes it.
``transactions(tid, username, description, extension, txn_key)``
    One row per commit (kept in both modes; pack removes rows no revision needs).
``object_state(zoid, tid, state)``
    History-preserving: every revision, primary key ``(zoid, tid)``.
    History-free: the current revision only, primary key ``zoid``.
    Both have an index on ``tid`` for polling. ``state`` NULL would mean deleted.
    ``checksum`` is :func:`atoll.storage.checksum.checksum` of the row (NULL:
    written before version 2, unchecked).
``oid_seq``
    New oids, handed out in blocks of :data:`OID_BLOCK`. A commit that stores an oid
    beyond every block handed out moves it past that oid (:data:`ADVANCE_OIDS`).
``commit_decisions(txn_id, tid, decided_at)`` (version 3)
    The collection commits this schema decided (:mod:`atoll.storage.decisions`):
    the row is inserted by the deciding commit itself.
``decision_homes(id, address)`` (version 3)
    Where the decisions of the collection commits this schema took part in live:
    a prepared transaction's gid names a row of it, so recovery finds the decider.

Schema versions 1 and 2 had no commit tables; their prepared transactions recorded
their decision in ``atoll_shared.commit_decisions``, which recovery still reads for
them.
"""

from __future__ import annotations

from types import SimpleNamespace

SCHEMA_VERSION = 3

#: oids handed out per sequence call: one round trip per OID_BLOCK new objects.
OID_BLOCK = 100

#: Schema upgrades: version -> statements that turn that version into the next; an
#: older schema found on a writable open is brought up to SCHEMA_VERSION by running
#: these in order.
# IF NOT EXISTS: an upgrade may meet tables a newer atoll already made (a schema
# whose version row was set back), and must still bring the schema up to date.
_CREATE_COMMIT_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.commit_decisions (
    txn_id text PRIMARY KEY,
    tid bigint NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.decision_homes (id serial PRIMARY KEY, address text NOT NULL UNIQUE);
"""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE {s}.object_state ADD COLUMN IF NOT EXISTS checksum integer",),
    2: tuple(part for part in _CREATE_COMMIT_TABLES.split(";") if part.strip()),
}

#: Version 1's table of decisions shared by the schemas of a PostgreSQL database.
LEGACY_DECISIONS_TABLE = "atoll_shared.commit_decisions"

_CREATE_COMMON = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.info (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {s}.commit_lock (id integer PRIMARY KEY, tid bigint NOT NULL);
INSERT INTO {s}.commit_lock VALUES (0, 0);
CREATE TABLE {s}.transactions (
    tid bigint PRIMARY KEY,
    username text NOT NULL,
    description text NOT NULL,
    extension bytea NOT NULL,
    txn_key text NOT NULL
);
CREATE SEQUENCE {s}.oid_seq INCREMENT BY {block} START WITH 1;
""" + _CREATE_COMMIT_TABLES

CREATE_HISTORY_PRESERVING = _CREATE_COMMON + """
CREATE TABLE {s}.object_state (
    zoid bigint NOT NULL,
    tid bigint NOT NULL,
    state bytea,
    checksum integer,
    PRIMARY KEY (zoid, tid)
);
CREATE INDEX object_state_tid ON {s}.object_state (tid);
"""

CREATE_HISTORY_FREE = _CREATE_COMMON + """
CREATE TABLE {s}.object_state (
    zoid bigint PRIMARY KEY,
    tid bigint NOT NULL,
    state bytea,
    checksum integer
);
CREATE INDEX object_state_tid ON {s}.object_state (tid);
"""

# Serializes schema creation by concurrent first opens (key: hash of the schema name).
SCHEMA_CREATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('atoll schema ' || %s))"

SCHEMA_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"

READ_INFO = "SELECT key, value FROM {s}.info"

WRITE_INFO = "INSERT INTO {s}.info VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"

MAX_PREPARED = "SHOW max_prepared_transactions"

# -- reading -------------------------------------------------------------------------

LAST_TID = "SELECT tid FROM {s}.commit_lock WHERE id = 0"

# Polling, in one statement: the newest tid and the oids others wrote since ours.
POLL = """
SELECT c.tid, ARRAY(
    SELECT DISTINCT o.zoid FROM {s}.object_state o
    WHERE o.tid > %(since)s AND o.tid <= c.tid AND o.tid <> ALL(%(own)s::bigint[])
) FROM {s}.commit_lock c WHERE c.id = 0
"""

LOAD_HP = """
SELECT state, tid, {checksum} FROM {s}.object_state
WHERE zoid = %s AND tid <= %s ORDER BY tid DESC LIMIT 1
"""

# One index probe per oid (newest revision at or before the snapshot).
LOAD_MANY_HP = """
SELECT z.zoid, r.state, r.tid, r.checksum FROM unnest(%s::bigint[]) AS z(zoid)
CROSS JOIN LATERAL (
    SELECT state, tid, {checksum} AS checksum FROM {s}.object_state o
    WHERE o.zoid = z.zoid AND o.tid <= %s ORDER BY o.tid DESC LIMIT 1
) r
"""

LOAD_HF = "SELECT state, tid, {checksum} FROM {s}.object_state WHERE zoid = %s"

LOAD_MANY_HF = "SELECT zoid, state, tid, {checksum} FROM {s}.object_state WHERE zoid = ANY(%s::bigint[])"

LOAD_SERIAL = "SELECT state, {checksum} FROM {s}.object_state WHERE zoid = %s AND tid = %s"

# Opens a history-free view's read transaction: its snapshot is fixed by this first
# statement, and the tid it reads is the newest commit that snapshot contains.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

# The next block of oids, and the oid epoch it is taken at (see BUMP_OID_EPOCH).
NEW_OID_BLOCK = "SELECT nextval('{s}.oid_seq'), (SELECT value FROM {s}.info WHERE key = 'oid_epoch')"

# -- committing ----------------------------------------------------------------------

BEGIN = "BEGIN"

# The commit lock (see the module docstring); returns the last committed tid.
# The last tid, under the commit lock, and the oid epoch (see BUMP_OID_EPOCH).
LOCK_COMMIT = (
    "SELECT tid, (SELECT value FROM {s}.info WHERE key = 'oid_epoch') FROM {s}.commit_lock WHERE id = 0 FOR UPDATE"
)

# A restore's write of oids that no new_oid() handed out bumps the oid epoch: a
# process whose oid block predates it may hold some of those oids (see
# PostgreSQLStorage._check_oid_epoch). Returns the new epoch.
BUMP_OID_EPOCH = """
INSERT INTO {s}.info VALUES ('oid_epoch', '1') ON CONFLICT (key)
DO UPDATE SET value = ({s}.info.value::bigint + 1)::text
RETURNING value
"""

# Current serials of the oids a commit writes or checks, read under the lock.
CURRENT_SERIALS_HP = """
SELECT z.zoid, r.tid FROM unnest(%s::bigint[]) AS z(zoid)
CROSS JOIN LATERAL (
    SELECT tid, state FROM {s}.object_state o
    WHERE o.zoid = z.zoid ORDER BY o.tid DESC LIMIT 1
) r WHERE r.state IS NOT NULL
"""

CURRENT_SERIALS_HF = (
    "SELECT zoid, tid FROM {s}.object_state WHERE zoid = ANY(%s::bigint[]) AND state IS NOT NULL"
)

LOAD_CURRENT = "SELECT state, tid, {checksum} FROM {s}.object_state WHERE zoid = %s ORDER BY tid DESC LIMIT 1"

# Given the highest oid a commit stores, takes (and throws away) blocks of oids until
# the next block starts past it: a racing setval could lower the sequence below a
# block another process just took; nextval cannot. Does nothing (no row of the
# series) when the oid is below the next block already. An oid more than 100,000
# blocks ahead (a sparse import) moves the sequence with one setval instead.
ADVANCE_OIDS = """
SELECT CASE WHEN n > 100000 THEN setval('{s}.oid_seq', %(oid)s + 1, false)
            ELSE (SELECT count(nextval('{s}.oid_seq')) FROM generate_series(1, n)) END
FROM (
    SELECT greatest(0, ceil((%(oid)s + 1 - CASE WHEN is_called THEN last_value + {block} ELSE last_value END)
                            / {block}::numeric))::bigint AS n
    FROM {s}.oid_seq
) AS needed
"""

SELECT_DECISION = "SELECT tid FROM {s}.commit_decisions WHERE txn_id = %s"

PRUNE_DECISIONS = "DELETE FROM {s}.commit_decisions WHERE decided_at < now() - make_interval(secs => %s)"

# The id of a decider's home, added when new (an autocommitted statement).
HOME_ID = """
WITH added AS (
    INSERT INTO {s}.decision_homes (address) VALUES (%(address)s) ON CONFLICT (address) DO NOTHING RETURNING id
)
SELECT id FROM added UNION ALL SELECT id FROM {s}.decision_homes WHERE address = %(address)s
"""

HOME_ADDRESS = "SELECT address FROM {s}.decision_homes WHERE id = %s"

TRANSACTION_EXISTS = "SELECT 1 FROM {s}.transactions WHERE tid = %s"

NOTIFY = "SELECT pg_notify(%s, %s)"

# A commit writes everything in one statement (rows, transaction, the decision of a
# collection's decider, the last tid): one execute and one round trip instead of a
# pipeline of four, whose client-side cost was most of a 1-object commit's. The
# NOTIFY rides in the transaction, delivered when it commits; a prepared member
# cannot NOTIFY (PostgreSQL refuses to prepare a transaction that did): its form
# (WRITE_PREPARED_*) returns the tid instead, and it notifies with COMMIT PREPARED.
_write_commit = """
WITH {unchanged}stored AS (
    INSERT INTO {{s}}.object_state (zoid, tid, state, checksum)
    SELECT z, %(tid)s, d, c FROM unnest(%(zoids)s::bigint[], %(datas)s::bytea[], %(sums)s::integer[]) AS u(z, d, c)
    {where}
    {on_conflict}
), logged AS (
    INSERT INTO {{s}}.transactions
    SELECT %(tid)s, %(user)s::text, %(description)s::text, %(extension)s::bytea, %(txn_key)s::text
    {where}
), decided AS (
    INSERT INTO {{s}}.commit_decisions (txn_id, tid) SELECT %(decision)s::text, %(tid)s
    WHERE %(decision)s::text IS NOT NULL{guard}
)
UPDATE {{s}}.commit_lock SET tid = %(tid)s WHERE id = 0{guard}
RETURNING {returning}
"""
_NOTIFYING = "pg_notify(%(channel)s, %(tid)s::text)"
_HF_REPLACES = (
    "ON CONFLICT (zoid) DO UPDATE SET tid = EXCLUDED.tid, state = EXCLUDED.state, checksum = EXCLUDED.checksum"
)
_ALWAYS = dict(unchanged="", where="", guard="")
WRITE_COMMIT_HP = _write_commit.format(**_ALWAYS, on_conflict="", returning=_NOTIFYING)
WRITE_COMMIT_HF = _write_commit.format(**_ALWAYS, on_conflict=_HF_REPLACES, returning=_NOTIFYING)
WRITE_PREPARED_HP = _write_commit.format(**_ALWAYS, on_conflict="", returning="%(tid)s")
WRITE_PREPARED_HF = _write_commit.format(**_ALWAYS, on_conflict=_HF_REPLACES, returning="%(tid)s")

# The same, sent with BEGIN and LOCK_COMMIT in one pipeline, so that a small commit
# takes the lock and writes in one round trip: every part is guarded by
# ``unchanged``, so it writes only if nothing was committed since the view's
# snapshot (%(snapshot)s), the case in which nothing can conflict and the tid
# chosen before the lock is later than the last one, and no restore moved the oid
# epoch since this process took its oid block (%(epoch)s). Otherwise it writes
# nothing (no row returned) and the commit goes on under the lock it holds, as one
# that locked first.
_UNCHANGED = """unchanged AS (
    SELECT 1 FROM {s}.commit_lock WHERE id = 0 AND tid <= %(snapshot)s
    AND (SELECT value FROM {s}.info WHERE key = 'oid_epoch') IS NOT DISTINCT FROM %(epoch)s::text
), """
_IF_UNCHANGED = dict(unchanged=_UNCHANGED, where="WHERE EXISTS (SELECT FROM unchanged)", guard=" AND EXISTS (SELECT FROM unchanged)")
WRITE_COMMIT_IF_UNCHANGED_HP = _write_commit.format(**_IF_UNCHANGED, on_conflict="", returning=_NOTIFYING)
WRITE_COMMIT_IF_UNCHANGED_HF = _write_commit.format(**_IF_UNCHANGED, on_conflict=_HF_REPLACES, returning=_NOTIFYING)

# A collection member's form, sent with BEGIN, LOCK_COMMIT and its PREPARE
# TRANSACTION in one pipeline. When the bet is lost the transaction prepared holds
# the lock and nothing else: it is rolled back and the commit goes on as one that
# locked first.
WRITE_PREPARED_IF_UNCHANGED_HP = _write_commit.format(**_IF_UNCHANGED, on_conflict="", returning="%(tid)s")
WRITE_PREPARED_IF_UNCHANGED_HF = _write_commit.format(
    **_IF_UNCHANGED, on_conflict=_HF_REPLACES, returning="%(tid)s"
)

# The session lock that tells recovery this view's session is alive (key: random).
OWNER_LOCK = "SELECT pg_advisory_lock(%s)"

# -- recovery ------------------------------------------------------------------------

PREPARED_OF_SCHEMA = """
SELECT gid, prepared FROM pg_prepared_xacts
WHERE database = current_database() AND starts_with(gid, %s)
"""

TRY_OWNER_LOCK = "SELECT pg_try_advisory_lock(%s)"

IS_PREPARED = "SELECT 1 FROM pg_prepared_xacts WHERE gid = %s AND database = current_database()"

OWNER_UNLOCK = "SELECT pg_advisory_unlock(%s)"

# Version 1's shared decisions (a prepared transaction of that version).
LEGACY_DECISION_EXISTS = "SELECT EXISTS (SELECT 1 FROM atoll_shared.commit_decisions WHERE txn_key = %s)"

# -- whole-database work -------------------------------------------------------------

HISTORY = """
SELECT o.tid, coalesce(length(o.state), 0), t.username, t.description
FROM {s}.object_state o LEFT JOIN {s}.transactions t ON t.tid = o.tid
WHERE o.zoid = %s ORDER BY o.tid DESC LIMIT %s
"""

ITERATE_TRANSACTIONS = """
SELECT tid, username, description, extension FROM {s}.transactions
WHERE tid >= %s AND tid <= %s ORDER BY tid
"""

RECORDS_OF = "SELECT zoid, state, {checksum} FROM {s}.object_state WHERE tid = %s ORDER BY zoid"

# verify(): every revision with its checksum, a page at a time in (zoid, tid) order.
VERIFY_PAGE = """
SELECT zoid, tid, state, {checksum} FROM {s}.object_state
WHERE (zoid, tid) > (%s, %s) ORDER BY zoid, tid LIMIT %s
"""

# History-free housekeeping: transaction rows whose revisions were all replaced
# (the newest one stays: it is the last tid).
PRUNE_REPLACED_TRANSACTIONS = """
DELETE FROM {s}.transactions t
WHERE t.tid < (SELECT tid FROM {s}.commit_lock WHERE id = 0)
  AND NOT EXISTS (SELECT 1 FROM {s}.object_state o WHERE o.tid = t.tid)
"""

COUNT_TRANSACTIONS = "SELECT count(*) FROM {s}.transactions"

COUNT_HP = """
SELECT count(*) FROM (
    SELECT DISTINCT ON (zoid) state FROM {s}.object_state ORDER BY zoid, tid DESC
) c WHERE state IS NOT NULL
"""

COUNT_HF = "SELECT count(*) FROM {s}.object_state WHERE state IS NOT NULL"

SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'
"""

# -- pack (postgresql_pack.py) ----------------------------------------------------

# A page of the revisions after (tid, zoid), in that order.
REVISIONS_AFTER_PAGE = """
SELECT zoid, tid, state, {checksum} FROM {s}.object_state
WHERE tid > %(tid)s OR (tid = %(tid)s AND zoid > %(zoid)s)
ORDER BY tid, zoid LIMIT %(n)s
"""

# Objects whose newest revision is at or before the pack tid: candidates for GC.
OBJECTS_NOT_WRITTEN_AFTER = "SELECT zoid FROM {s}.object_state GROUP BY zoid HAVING max(tid) <= %s"

VACUUM_STATES = "VACUUM (ANALYZE) {s}.object_state"
VACUUM_TRANSACTIONS = "VACUUM (ANALYZE) {s}.transactions"

# Values of Storage.set_metadata: dotted keys, apart from the schema's own settings.
READ_APP_INFO = "SELECT key, value FROM {s}.info WHERE key LIKE '%%.%%'"

PACK_DELETE_OBJECTS = "DELETE FROM {s}.object_state WHERE zoid = ANY(%s::bigint[])"

PACK_DELETE_OLD_REVISIONS = """
DELETE FROM {s}.object_state o USING (
    SELECT zoid, max(tid) AS keep FROM {s}.object_state WHERE tid <= %s GROUP BY zoid
) k WHERE o.zoid = k.zoid AND o.tid < k.keep
"""

PACK_DELETE_TRANSACTIONS = """
DELETE FROM {s}.transactions t
WHERE t.tid <> (SELECT tid FROM {s}.commit_lock WHERE id = 0)
  AND NOT EXISTS (SELECT 1 FROM {s}.object_state o WHERE o.tid = t.tid)
"""

# -- undo (postgresql_undo.py) -------------------------------------------------------

# A page of the transaction log, newest first, below a tid, with the bytes each wrote.
TRANSACTIONS_BEFORE = """
SELECT t.tid, t.username, t.description, t.extension, t.txn_key,
       (SELECT coalesce(sum(length(o.state)), 0) FROM {s}.object_state o WHERE o.tid = t.tid)
FROM {s}.transactions t WHERE t.tid < %s ORDER BY t.tid DESC LIMIT %s
"""

LAST_PACK = "SELECT value FROM {s}.info WHERE key = 'last_pack'"

# Inside the pack's transaction: the newest pack tid, for undo (see postgresql_undo.py).
SET_LAST_PACK = """
INSERT INTO {s}.info VALUES ('last_pack', %s) ON CONFLICT (key)
DO UPDATE SET value = greatest({s}.info.value::bigint, EXCLUDED.value::bigint)::text
"""

FIND_TRANSACTIONS = """
SELECT txn_key, tid FROM {s}.transactions
WHERE txn_key = ANY(%s::text[]) AND tid >= %s AND tid <= %s
"""

_TEMPLATES = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}


def queries(quoted_schema: str, checksums: bool = True) -> SimpleNamespace:
    """Every statement above with ``{s}`` replaced by the (already quoted) schema.

    ``checksums`` False reads NULL for the checksum column: a version 1 schema
    opened read-only, which cannot be given the column."""
    column = "checksum" if checksums else "NULL::integer"
    return SimpleNamespace(
        **{
            name: text.replace("{s}", quoted_schema).replace("{block}", str(OID_BLOCK)).replace("{checksum}", column)
            for name, text in _TEMPLATES.items()
        }
    )
