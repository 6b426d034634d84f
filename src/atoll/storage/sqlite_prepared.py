"""Commits that stay atomic across several SQLite files, through a crash.

SQLite commits each file on its own, so a collection of SQLite databases commits
one transaction file after file, and a process that died between two of those
COMMITs would leave the transaction in some files and not in the others. This
module makes such a commit's vote durable, so that whoever next writes to a file
finishes or undoes what a dead process left there.

Prepare
    When a commit's participants include another SQLite file, each SQLite
    participant's ``tpc_vote`` writes, besides the rows it inserts in its open
    write transaction, the whole commit to a *prepared file* beside the database
    (``<path>-prepared``): its tid, the transaction id the participants share, the
    partners' paths, the metadata and every record. The file is written aside,
    fsynced and renamed into place, so it is there whole or not at all.
Decision
    The transaction package finishes the participants one after the other. The
    commit is decided when the first of them has committed: from then on some
    file's ``transactions`` table holds the shared id.
Settling
    A prepared file outlives its commit. The next writer of the file (a vote, a
    pack, or opening the storage) removes it, always while holding the file's write
    lock, so no process can remove a file another one is preparing. Before
    removing it, that writer settles it:

    - its tid is committed here under the shared id: the commit finished;
    - a partner committed the shared id: the process died between two finishes, and
      the records are inserted here with the tid they were prepared with (nothing
      else was committed here meanwhile: every writer settles first);
    - no partner has it: the commit finished nowhere, and never will (every
      participant settles the same way), so it is dropped.

    A partner that cannot be read stops the settling with an error naming it:
    restore the partner, or delete the prepared file to give the commit up.

Until a file is settled its readers do not see the transaction, while readers of
a partner that committed do. Opening the storage settles, so this lasts until a
process opens the file or commits to it. A commit whose participants include a
storage this module cannot ask (PostgreSQL) is not prepared this way: it is atomic
while the process lives.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Mapping, Sequence
from urllib.parse import quote

from atoll.errors import StorageError
from atoll.ids import p64, tid_from_time, u64
from atoll.storage import sqlite_sql as sql
from atoll.storage.sqlite_write import insert_commit, write_transaction

__all__ = ["PreparedCommit", "prepared_path", "sqlite_partners", "write", "read", "remove", "decided", "settle"]

log = logging.getLogger(__name__)

#: The first bytes of every prepared file.
MAGIC = b"ATOLLPRP"
VERSION = 1
#: A partner commits the shared id with a tid from its own clock, a moment before or
#: after this file's vote; partners' transactions older than this window before the
#: vote are not searched.
DECISION_WINDOW = 24 * 3600.0
#: Seconds a partner's read waits for a lock.
PARTNER_TIMEOUT = 60.0

_u32 = struct.Struct(">I")


@dataclass
class PreparedCommit:
    """One commit as a prepared file holds it; ``records`` maps oid -> (read serial,
    data), in the order the commit stored them."""

    tid: int
    txn_id: str
    partners: list[str]
    prepared_at: float
    user: str = ""
    description: str = ""
    extension: bytes = b""
    records: Mapping[bytes, tuple[bytes, bytes]] = field(default_factory=dict)


def prepared_path(database_path: str) -> str:
    """Where the prepared file of a database file lives."""
    return database_path + "-prepared"


def sqlite_partners(participants: Sequence[str], own_key: str) -> list[str]:
    """The paths of the other SQLite files of a commit, given its participants' sort
    keys; empty when there are none, or when some participant is a durable storage
    of another kind, whose commit this module cannot look up."""
    partners = []
    for key in participants:
        if key == own_key or key.startswith("memory:"):  # memory: gone with the process anyway
            continue
        if not key.startswith("sqlite:"):
            return []
        partners.append(key[len("sqlite:") :])
    return partners


def write(path: str, commit: PreparedCommit, durable: bool) -> None:
    """Write ``commit`` to ``path`` whole or not at all (fsynced when ``durable``)."""
    header = json.dumps(
        {
            "version": VERSION,
            "tid": commit.tid,
            "txn_id": commit.txn_id,
            "partners": commit.partners,
            "prepared_at": commit.prepared_at,
            "user": commit.user,
            "description": commit.description,
            "extension": commit.extension.hex(),
            "records": len(commit.records),
        }
    ).encode()
    aside = path + ".tmp"
    with open(aside, "wb") as out:
        out.write(MAGIC + _u32.pack(len(header)) + header + _u32.pack(zlib.crc32(header)))
        # Each record: oid, read serial (both 8 bytes as stored), data length, data.
        pack_length = _u32.pack
        records = b"".join(
            [part for oid, (serial, data) in commit.records.items() for part in (oid, serial, pack_length(len(data)), data)]
        )
        out.write(records)
        out.write(pack_length(zlib.crc32(records)))
        out.flush()
        if durable:
            os.fsync(out.fileno())
    os.replace(aside, path)
    if durable:
        _fsync_folder(path)


def read(path: str, records: bool = False) -> PreparedCommit | None:
    """The commit in a prepared file (with its records if asked), None if there is no
    file; StorageError if it is not a whole prepared file."""
    try:
        source = open(path, "rb")
    except FileNotFoundError:
        return None
    with source:
        if source.read(len(MAGIC)) != MAGIC:
            raise StorageError(f"{path} is not an atoll prepared-commit file; move it away to open the database")
        try:
            (length,) = _u32.unpack(source.read(4))
            header = source.read(length)
            (crc,) = _u32.unpack(source.read(4))
            if zlib.crc32(header) != crc:
                raise ValueError("header checksum mismatch")
            meta = json.loads(header)
            if meta.get("version") != VERSION:
                raise StorageError(
                    f"{path} was written by another atoll version (format {meta.get('version')!r}, this one "
                    f"reads {VERSION}): settle it with that version, or delete it to give up its commit"
                )
            commit = PreparedCommit(
                tid=int(meta["tid"]),
                txn_id=str(meta["txn_id"]),
                partners=[str(p) for p in meta["partners"]],
                prepared_at=float(meta["prepared_at"]),
                user=str(meta["user"]),
                description=str(meta["description"]),
                extension=bytes.fromhex(meta["extension"]),
            )
            if records:
                commit.records = _read_records(source, int(meta["records"]))
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise StorageError(f"{path} is damaged ({e}); delete it to give up the commit it held") from None
    return commit


def _read_records(source: BinaryIO, count: int) -> dict[bytes, tuple[bytes, bytes]]:
    rest = source.read()
    records, crc = rest[:-4], rest[-4:]
    if len(crc) != 4 or _u32.unpack(crc)[0] != zlib.crc32(records):
        raise ValueError("record checksum mismatch")
    found: dict[bytes, tuple[bytes, bytes]] = {}
    at = 0
    for _ in range(count):
        oid, serial = records[at : at + 8], records[at + 8 : at + 16]
        (length,) = _u32.unpack_from(records, at + 16)
        at += 20 + length
        found[oid] = (serial, records[at - length : at])
    if at != len(records):
        raise ValueError("record count mismatch")
    return found


def remove(path: str) -> None:
    """Delete a prepared file (it may already be gone), and any half-written one a
    process left when it died while writing it."""
    for each in (path, path + ".tmp"):
        try:
            os.unlink(each)
        except FileNotFoundError:
            pass


def decided(commit: PreparedCommit, path: str) -> bool:
    """Whether some partner committed the transaction (see "Decision")."""
    since = u64(tid_from_time(max(commit.prepared_at - DECISION_WINDOW, 0.0)))
    for partner in commit.partners:
        try:
            conn = sqlite3.connect(f"file:{quote(partner)}?mode=ro", uri=True, timeout=PARTNER_TIMEOUT)
            try:
                found = conn.execute(sql.PARTNER_COMMITTED, (since, commit.txn_id)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StorageError(
                f"{path} holds a commit prepared with {partner}, which cannot be read ({e}): restore it, "
                f"or delete {path} to give that commit up"
            ) from None
        if found:
            return True
    return False


def settle(writer: sqlite3.Connection, database_path: str, keep_history: bool) -> None:
    """Complete or drop the commit a process prepared in ``database_path`` and did not
    finish, if there is one (see "Settling"). The caller holds the storage's commit
    lock and ``writer``; each step runs under SQLite's write lock. An
    :class:`sqlite3.Error` passes to the caller, which names what failed."""
    path = prepared_path(database_path)
    while os.path.exists(path):
        with write_transaction(writer):
            done = _settle_step(writer, path, database_path, keep_history)
        if done:
            log.warning("%s: %s", database_path, done)


def _settle_step(writer: sqlite3.Connection, path: str, database_path: str, keep_history: bool) -> str | None:
    """One step of settling, inside a write transaction; what it did, for the log
    (None when the file only had to go)."""
    commit = read(path)
    if commit is None:
        return None
    row = writer.execute(sql.SELECT_TXN_ID, (commit.tid,)).fetchone()
    if row is not None:
        if row[0] != commit.txn_id:
            raise StorageError(f"{path} does not belong to {database_path} (its tid holds another transaction)")
        remove(path)  # the commit finished here
        return None
    described = f"transaction {p64(commit.tid).hex()} (id {commit.txn_id}), prepared by a process that stopped"
    if not decided(commit, path):
        remove(path)
        return f"dropped {described}: no other database of its collection committed it"
    last = writer.execute(sql.SELECT_LAST_TID).fetchone()[0] or 0
    if last >= commit.tid:
        raise StorageError(
            f"{path} cannot be settled: {database_path} has commits after it; delete it to give that commit up"
        )
    commit = read(path, records=True)
    assert commit is not None
    meta = (commit.user, commit.description, commit.extension, commit.txn_id)
    insert_commit(
        writer, commit.tid, meta, dict(commit.records), sorted(commit.records), keep_history, len(commit.partners)
    )
    return f"committed {described}, as another database of its collection had"  # the file goes next step


def _fsync_folder(path: str) -> None:
    """Make a rename in the folder of ``path`` durable."""
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
