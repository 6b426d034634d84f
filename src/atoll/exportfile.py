"""The export file: a set of records (database, oid, data), written as a stream.

Format version 1, all integers big-endian::

    header  = MAGIC, version (2 bytes), metadata length (4 bytes), metadata (JSON:
              {"root": {"database": NAME, "oid": HEX}, "atoll": VERSION})
    entry   = "D" name length (2) name (UTF-8)        a database name; the first
                                                      is number 0, the next 1, ...
            | "R" database (2) oid (8) length (4) data   one record
            | "L" database (2) oid (8) name length (2) name oid (8)
                                                      a reference from record
                                                      (database, oid) to an object
                                                      left out of the set
    end     = "E" records (8) leaving references (8) CRC-32 of every byte before "E" (4)

The root's record is the first. A file without its end (cut short, still being
written) or whose CRC does not match is refused before anything is imported.
Records are the storage's bytes (:mod:`atoll.serialize`), unchanged: the importer
rewrites their references (:mod:`atoll.relocate`).

:class:`ExportWriter` streams entries to any binary file; :class:`ExportReader`
reads one in two passes (:meth:`~ExportReader.scan` checks it whole and lists what it
holds, :meth:`~ExportReader.records` gives the records), so neither holds more than
one record's data at a time.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import IO, Iterator

from atoll.errors import ExportError

__all__ = ["MAGIC", "VERSION", "ExportWriter", "ExportReader", "ExportContents"]

#: The first bytes of every atoll export file.
MAGIC = b"\x93ATOLL-EXPORT\r\n\x1a\n"
#: The format version this module writes and reads.
VERSION = 1

_ZEXP = b"ZEXP"  # ZODB's export files start so
_U16 = struct.Struct(">H")
_HEADER = struct.Struct(">HI")
#: The longest header a reader accepts (atoll writes a few hundred bytes of JSON).
MAX_HEADER = 1 << 20
_RECORD = struct.Struct(">H8sI")
_END = struct.Struct(">QQI")
_CHUNK = 1 << 20


class ExportWriter:
    """Writes an export to ``file`` (binary, open for writing): the header at once,
    then each :meth:`record` and :meth:`leaving` as it comes, then :meth:`finish`."""

    def __init__(self, file: IO[bytes], root_database: str, root_oid: bytes) -> None:
        self._file = file
        self._crc = 0
        self._names: dict[str, int] = {}  # database name -> its number in this file
        self.record_count = 0  # records written so far
        self.leaving_count = 0  # leaving references written so far
        metadata = json.dumps({"root": {"database": root_database, "oid": root_oid.hex()}, "atoll": _version()})
        encoded = metadata.encode("utf-8")
        self._write(MAGIC + _HEADER.pack(VERSION, len(encoded)) + encoded)

    def _write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._file.write(data)

    def _number(self, name: str) -> int:
        number = self._names.get(name)
        if number is None:
            encoded = name.encode("utf-8")
            self._write(b"D" + _U16.pack(len(encoded)) + encoded)
            number = self._names[name] = len(self._names)
        return number

    def record(self, database: str, oid: bytes, data: bytes) -> None:
        """Write one record."""
        number = self._number(database)
        self._write(b"R" + _RECORD.pack(number, oid, len(data)))
        self._write(data)
        self.record_count += 1

    def leaving(self, database: str, oid: bytes, to_database: str, to_oid: bytes) -> None:
        """Note that record ``(database, oid)`` refers to an object left out."""
        number = self._number(database)
        encoded = to_database.encode("utf-8")
        self._write(b"L" + _U16.pack(number) + oid + _U16.pack(len(encoded)) + encoded + to_oid)
        self.leaving_count += 1

    def finish(self) -> None:
        """Write the end (the file is incomplete without it)."""
        self._file.write(b"E" + _END.pack(self.record_count, self.leaving_count, self._crc))


def _version() -> str:
    from atoll import __version__

    return __version__


@dataclass
class ExportContents:
    """What :meth:`ExportReader.scan` found in a file.

    ``root``: ``(database, oid)`` of the exported object; ``records``: oids by
    database name, in file order; ``leaving``: references to objects left out, as
    ``(database, oid, referenced database, referenced oid)``; ``size``: bytes of
    record data."""

    root: tuple[str, bytes]
    records: dict[str, list[bytes]] = field(default_factory=dict)
    leaving: list[tuple[str, bytes, str, bytes]] = field(default_factory=list)
    size: int = 0

    @property
    def count(self) -> int:
        """Records in the file."""
        return sum(len(oids) for oids in self.records.values())


class ExportReader:
    """Reads an export file (binary, seekable); ``name`` names it in errors.
    The header is read at once: a file that is not an atoll export raises
    :class:`~atoll.errors.ExportError`."""

    def __init__(self, file: IO[bytes], name: str = "the file") -> None:
        self._file = file
        self._name = name
        self._start = file.tell()
        head = file.read(len(MAGIC))
        if head != MAGIC:
            if head.startswith(_ZEXP):
                raise ExportError(f"{name} is a ZODB export (.zexp), not an atoll export: atoll reads only its own")
            raise ExportError(f"{name} is not an atoll export file (it does not start with atoll's export marker)")
        version, size = _HEADER.unpack(self._read(_HEADER.size))
        if version != VERSION:
            raise ExportError(f"{name} is an atoll export of format version {version}; this atoll reads version {VERSION}")
        if size > MAX_HEADER:  # read whole below: a hostile length must not allocate gigabytes
            raise ExportError(f"{name} has a damaged header (it claims {size:,} bytes)")
        try:
            root = json.loads(self._read(size))["root"]
            self.root: tuple[str, bytes] = (str(root["database"]), bytes.fromhex(root["oid"]))
        except (ValueError, KeyError, TypeError):
            raise ExportError(f"{name} has a damaged header") from None
        self._entries_at = file.tell()

    def _read(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise ExportError(f"{self._name} ends before its end marker: the export is incomplete (cut short?)")
        return data

    def _entries(self, with_data: bool) -> Iterator[tuple[str, str, bytes, bytes | int | tuple[str, bytes]]]:
        """``(kind, database, oid, extra)`` per record ("R": its data, or without
        ``with_data`` its size, the data read in chunks only for the CRC) and per
        leaving reference ("L": the referenced ``(database, oid)``); checks the end."""
        file = self._file
        file.seek(self._start)
        crc = zlib.crc32(file.read(self._entries_at - self._start))
        names: list[str] = []
        records = leaving = 0
        while True:
            tag = self._read(1)
            if tag == b"E":
                expected_records, expected_leaving, expected_crc = _END.unpack(self._read(_END.size))
                if (expected_records, expected_leaving, expected_crc) != (records, leaving, crc):
                    raise ExportError(f"{self._name} is damaged (its contents do not match its checksum)")
                return
            crc = zlib.crc32(tag, crc)
            if tag == b"D":
                head = self._read(2)
                encoded = self._read(_U16.unpack(head)[0])
                crc = zlib.crc32(encoded, zlib.crc32(head, crc))
                names.append(self._decode(encoded))
            elif tag == b"R":
                head = self._read(_RECORD.size)
                crc = zlib.crc32(head, crc)
                number, oid, size = _RECORD.unpack(head)
                database = self._database(names, number)
                if with_data:
                    data = self._read(size)
                    crc = zlib.crc32(data, crc)
                    records += 1
                    yield "R", database, oid, data
                    continue
                left = size
                while left:
                    chunk = self._read(min(left, _CHUNK))
                    crc = zlib.crc32(chunk, crc)
                    left -= len(chunk)
                records += 1
                yield "R", database, oid, size
            elif tag == b"L":
                head = self._read(12)
                number, oid = _U16.unpack(head[:2])[0], head[2:10]
                encoded = self._read(_U16.unpack(head[10:])[0])
                to_oid = self._read(8)
                crc = zlib.crc32(to_oid, zlib.crc32(encoded, zlib.crc32(head, crc)))
                leaving += 1
                yield "L", self._database(names, number), oid, (self._decode(encoded), to_oid)
            else:
                raise ExportError(f"{self._name} is damaged (an unknown entry at byte {file.tell() - 1})")

    def _database(self, names: list[str], number: int) -> str:
        if number >= len(names):
            raise ExportError(f"{self._name} is damaged (a record of an undeclared database)")
        return names[number]

    def _decode(self, encoded: bytes) -> str:
        try:
            return encoded.decode("utf-8")
        except UnicodeDecodeError:
            raise ExportError(f"{self._name} is damaged (a database name that is not UTF-8)") from None

    def scan(self) -> ExportContents:
        """Read the whole file once, checking it, and say what it holds."""
        contents = ExportContents(self.root)
        first = True
        for kind, database, oid, extra in self._entries(with_data=False):
            if kind == "R":
                if first and (database, oid) != self.root:
                    raise ExportError(f"{self._name} is damaged (its first record is not its root)")
                first = False
                contents.records.setdefault(database, []).append(oid)
                assert isinstance(extra, int)
                contents.size += extra
            else:
                assert isinstance(extra, tuple)
                contents.leaving.append((database, oid, *extra))
        if first:
            raise ExportError(f"{self._name} holds no record")
        self._file.seek(self._start)
        return contents

    def records(self) -> Iterator[tuple[str, bytes, bytes]]:
        """``(database, oid, data)`` of every record, in file order (after
        :meth:`scan` has checked the file)."""
        for kind, database, oid, data in self._entries(with_data=True):
            if kind == "R":
                assert isinstance(data, bytes)
                yield database, oid, data
