"""Giving a record's references new oids, inertly: what an import writes.

An imported object gets a new oid in its destination database, so every record
that refers to it must be written with the new oid. :func:`relocate_references`
does that on the record's bytes: it reads the pickle opcodes (``pickletools``, no
unpickling), follows the stack only as far as needed to see each persistent
reference (the forms of :mod:`atoll.serialize`: ``oid``, ``(oid, class)``,
``['m', (database, oid, class)]``, ``['n', (database, oid)]``, ``['w', (oid,)]``,
``['w', (oid, database)]``) and where each reference's 8-byte oid was written, and
overwrites those 8 bytes. Nothing is imported and no code of the record runs; the
record keeps every other byte, so its length and any protocol 4 frames stay valid.

:func:`atoll.serialize.references` finds what a record refers to (the export's
walk uses it); this module is the one place that also needs *where* each oid is,
which an unpickler cannot tell.

An oid written once and used by several references (the pickle memo shares one
bytes object) is one place: its references must all move to the same new oid,
else :class:`~atoll.errors.ExportError`. So must a reference in a form this
module does not know.
"""

from __future__ import annotations

import io
import pickletools
from typing import Callable

from atoll.errors import ExportError

__all__ = ["relocate_references", "Relocate"]

#: ``relocate(database, oid, weak)``: the new oid of the object a reference names
#: (``database`` is None for the record's own), or None to leave it as it is.
Relocate = Callable[[str | None, bytes, bool], bytes | None]

# Opcodes that push a str or bytes value; the bytes ones whose payload follows a
# length of ``n`` bytes after the opcode are rewritable in place.
_PAYLOAD_AFTER = {"SHORT_BINBYTES": 2, "SHORT_BINSTRING": 2, "BINBYTES": 5, "BINSTRING": 5, "BINBYTES8": 9}
_VALUES = {*_PAYLOAD_AFTER, "STRING", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MARK = object()
_OTHER = object()  # any value whose contents do not matter here


class _Value:
    """A str or bytes value, and where an 8-byte bytes value's payload is."""

    __slots__ = ("value", "at")

    def __init__(self, value: object, at: int | None) -> None:
        self.value = value
        self.at = at


class _Sequence:
    """A tuple or list being built, with its items (for references' shapes)."""

    __slots__ = ("is_list", "items")

    def __init__(self, is_list: bool, items: list) -> None:
        self.is_list = is_list
        self.items = items


def _pop_to_mark(stack: list) -> list:
    for at in range(len(stack) - 1, -1, -1):
        if stack[at] is _MARK:
            items = stack[at + 1 :]
            del stack[at:]
            return items
    raise ValueError("no MARK on the stack")


def _persistent_ids(data: bytes) -> list[object]:
    """The value each BINPERSID of ``data`` (one record: its pickles back to back)
    takes, as _Value/_Sequence shapes."""
    source = io.BytesIO(data)
    stack: list = []
    memo: dict[object, object] = {}
    found: list[object] = []
    while source.tell() < len(data):
        for op, arg, pos in pickletools.genops(source):
            name = op.name
            if name in _VALUES:
                skip = _PAYLOAD_AFTER.get(name)
                at = None
                if skip is not None and pos is not None and isinstance(arg, bytes) and len(arg) == 8:
                    at = pos + skip  # where the 8 bytes are
                stack.append(_Value(arg, at))
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_TUPLE", "EMPTY_LIST"):
                stack.append(_Sequence(name == "EMPTY_LIST", []))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = stack[-size:]
                del stack[-size:]
                stack.append(_Sequence(False, items))
            elif name in ("TUPLE", "LIST"):
                stack.append(_Sequence(name == "LIST", _pop_to_mark(stack)))
            elif name == "APPEND":
                item = stack.pop()
                if isinstance(stack[-1], _Sequence):
                    stack[-1].items.append(item)
            elif name == "APPENDS":
                items = _pop_to_mark(stack)
                if isinstance(stack[-1], _Sequence):
                    stack[-1].items.extend(items)
            elif name in _PUTS:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GETS:
                stack.append(memo.get(arg, _OTHER))
            elif name == "BINPERSID":
                found.append(stack.pop())
                stack.append(_OTHER)
            elif name == "PERSID":
                found.append(_OTHER)  # a protocol 0 reference: a form not rewritten here
                stack.append(_OTHER)
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _pop_to_mark(stack)
            elif name == "STOP":
                stack.pop()
            elif name not in ("PROTO", "FRAME"):
                before = op.stack_before
                if pickletools.markobject in before:
                    _pop_to_mark(stack)
                    below = before.index(pickletools.markobject)
                else:
                    below = len(before)
                if below:
                    del stack[-below:]
                stack.extend([_OTHER] * len(op.stack_after))
    return found


def _reference(pid: object) -> tuple[str | None, _Value, bool] | None:
    """``(database or None, the oid's value, weak)`` of a persistent id, or None
    for a form that is not one of atoll's and ZODB's."""
    if isinstance(pid, _Value) and isinstance(pid.value, bytes):
        return None, pid, False
    if not isinstance(pid, _Sequence) or not pid.items:
        return None
    items = pid.items
    if not pid.is_list:
        first = items[0]
        return (None, first, False) if isinstance(first, _Value) and isinstance(first.value, bytes) else None
    if len(items) != 2 or not isinstance(items[0], _Value) or not isinstance(items[1], _Sequence):
        return None
    kind, args = items[0].value, items[1].items
    if kind in ("m", "n") and len(args) >= 2:
        name, oid = args[0], args[1]
        if isinstance(name, _Value) and isinstance(name.value, str) and isinstance(oid, _Value):
            return name.value, oid, False
    elif kind == "w" and args and isinstance(args[0], _Value):
        if len(args) == 1:
            return None, args[0], True
        if isinstance(args[1], _Value) and isinstance(args[1].value, str):
            return args[1].value, args[0], True
    return None


def relocate_references(data: bytes, relocate: Relocate) -> bytes:
    """``data`` with each persistent reference's oid replaced by what ``relocate``
    returns for it (None: left as it is). See the module docstring.

    A record without a BINPERSID or PERSID byte has no reference and is returned
    as it is, unread. Raises :class:`~atoll.errors.ExportError` when a reference
    cannot be rewritten (a form not known, an oid not written as 8 raw bytes, one
    oid shared by references that move apart) or ``data`` is not a pickle."""
    if b"Q" not in data and b"P" not in data:
        return data
    try:
        pids = _persistent_ids(data)
    except (ValueError, IndexError, KeyError) as exc:
        raise ExportError(f"a record that is not a readable pickle ({exc})") from None
    decided: dict[int, bytes] = {}  # payload position -> the oid written there
    changed = False
    for pid in pids:
        reference = _reference(pid)
        if reference is None:
            raise ExportError("a record holds a persistent reference in a form atoll does not know")
        database, oid, weak = reference
        if not isinstance(oid.value, bytes) or len(oid.value) != 8:
            raise ExportError(f"a record holds a reference whose oid is not 8 bytes ({oid.value!r})")
        new = relocate(database, oid.value, weak)
        if new is None:
            new = oid.value
        if oid.at is None:
            if new != oid.value:
                raise ExportError(
                    f"a record writes oid 0x{oid.value.hex()} in a way that cannot be rewritten (protocol 0)"
                )
            continue
        if decided.setdefault(oid.at, new) != new:
            raise ExportError(f"a record shares oid 0x{oid.value.hex()} between references that move apart")
        changed = changed or new != oid.value
    if not changed:
        return data
    out = bytearray(data)
    for at, new in decided.items():
        out[at : at + 8] = new
    return bytes(out)
