"""Looking inside records without the application's code, for tools.

A record (see :mod:`atoll.serialize` for its format) names classes and holds an
object's state. :func:`describe_record` reads one *inertly*: no module is imported
and no code of the record's classes runs. Every class the record names becomes an
:class:`Instance` that remembers the class's dotted name, the arguments it was
built with and the state it was given; every persistent reference becomes a
:class:`Reference`. Only a few standard value types that run nothing of the
application's when built (dates, decimals, UUIDs, sets, ...) are made for real, so
that they read naturally. The ``atoll`` command shows records this way, so it works
on any database, with or without the application installed, and a hostile record
can do no more than print oddly.

>>> from persistent.mapping import PersistentMapping
>>> from atoll.serialize import make_record
>>> view = describe_record(make_record(PersistentMapping(name="Ada")))
>>> view.class_name
'persistent.mapping.PersistentMapping'
>>> view.state
{'data': {'name': 'Ada'}}
"""

from __future__ import annotations

import collections
import datetime
import decimal
import io
import pickle
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["Reference", "Instance", "RecordView", "describe_record", "walk_references"]


@dataclass(frozen=True)
class Reference:
    """A persistent reference found in a record.

    ``database`` is None for an object of the record's own database, else the name
    of the other database of the collection. ``class_name`` is the referenced
    object's class as the reference names it (None when it does not).
    """

    oid: bytes
    database: str | None = None
    class_name: str | None = None
    weak: bool = False

    def __str__(self) -> str:
        where = f"{self.database}:" if self.database else ""
        return f"<{'weak ' if self.weak else ''}{where}0x{self.oid.hex()}{' ' + self.class_name if self.class_name else ''}>"


class Instance:
    """An object of a class named by a record, rebuilt without importing the class.

    ``class_name`` is the dotted name; ``args`` what it was constructed with;
    ``state`` what ``__setstate__`` would have received (None if nothing);
    ``items`` what was appended or set as items (list or dict contents).
    """

    __slots__ = ("class_name", "args", "state", "items")

    def __init__(self, class_name: str, args: tuple = ()) -> None:
        self.class_name = class_name
        self.args = args
        self.state: Any = None
        self.items: list[Any] = []

    # The unpickler gives a built object its state and items through these.
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Keep an item a pickle appends (a list's, a set's)."""
        self.items.append(value)

    def extend(self, values: Any) -> None:
        """Keep items a pickle appends in one go."""
        self.items.extend(values)

    add = append

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args]
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        if self.items:
            parts.append(f"items={self.items!r}")
        return f"{self.class_name}({', '.join(parts)})"


@dataclass
class RecordView:
    """What :func:`describe_record` found: the class, the arguments its ghost is made
    with (None when there are none), the state and every reference in order."""

    class_name: str
    args: Any
    state: Any
    references: list[Reference] = field(default_factory=list)


# Standard types that are made for real: building them runs no application code.
_REAL: dict[tuple[str, str], Any] = {
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("decimal", "Decimal"): decimal.Decimal,
    ("uuid", "UUID"): uuid.UUID,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "deque"): collections.deque,
}


def _encode(text: str, encoding: str = "latin-1") -> bytes:
    """Protocol 2 writes bytes as ``_codecs.encode(text, 'latin1')``."""
    return text.encode("latin-1")


class _InertBase:
    """Base of the stand-in classes: any construction, state or items are recorded."""

    _dotted = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # pickle's NEWOBJ calls cls.__new__(cls, *args), so a stand-in must be a
        # type; what it returns (an Instance, so __init__ never runs) is kept.
        return Instance(cls._dotted, args)


_stand_ins: dict[str, type] = {}


def _stand_in(dotted: str) -> type:
    klass = _stand_ins.get(dotted)
    if klass is None:
        klass = type(dotted.rpartition(".")[2] or "global", (_InertBase,), {"_dotted": dotted})
        _stand_ins[dotted] = klass
    return klass


def _reconstruct(klass: Any, base: Any = None, state: Any = None) -> Any:
    """copyreg's ``_reconstructor``/``__newobj__``: an Instance of ``klass``."""
    name = getattr(klass, "_dotted", None) or getattr(klass, "__qualname__", None) or repr(klass)
    instance = Instance(name)
    if state is not None:
        instance.args = (state,)
    return instance


def _newobj(klass: Any, *args: Any) -> Any:
    instance = _reconstruct(klass)
    instance.args = args
    return instance


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, data: io.BytesIO, found: list[Reference]) -> None:
        super().__init__(data)
        self._found = found

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        if (module, name) == ("copyreg", "__newobj__"):
            return _newobj
        if (module, name) == ("_codecs", "encode"):
            return _encode
        real = _REAL.get((module, name))
        if real is not None:
            return real
        return _stand_in(f"{module}.{name}")

    def persistent_load(self, ref: Any) -> Reference:
        reference = _reference(ref)
        self._found.append(reference)
        return reference


def _class_name(klass: Any) -> str | None:
    if klass is None:
        return None
    dotted = getattr(klass, "_dotted", None)
    if dotted:
        return str(dotted)
    if isinstance(klass, tuple) and len(klass) == 2 and all(isinstance(p, str) for p in klass):
        return f"{klass[0]}.{klass[1]}"
    module = getattr(klass, "__module__", None)
    name = getattr(klass, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(klass)


def _reference(ref: Any) -> Reference:
    """A Reference for any persistent-id form a record may hold."""
    if isinstance(ref, bytes):
        return Reference(ref)
    if isinstance(ref, tuple) and ref and isinstance(ref[0], bytes):
        return Reference(ref[0], None, _class_name(ref[1]) if len(ref) > 1 else None)
    if isinstance(ref, list) and ref:
        kind, rest = ref[0], ref[1:] and ref[1]
        if kind == "m" and isinstance(rest, tuple) and len(rest) >= 2:
            return Reference(rest[1], rest[0], _class_name(rest[2]) if len(rest) > 2 else None)
        if kind == "n" and isinstance(rest, tuple) and len(rest) >= 2:
            return Reference(rest[1], rest[0])
        if kind == "w" and isinstance(rest, tuple) and rest:
            database = rest[1] if len(rest) > 1 else None
            return Reference(rest[0], database, None, weak=True)
        if kind == "w" and isinstance(rest, bytes):
            return Reference(rest, None, None, weak=True)
    raise pickle.UnpicklingError(f"unknown persistent reference form {ref!r}")


def describe_record(data: bytes) -> RecordView:
    """Read a record inertly: its class, ghost arguments, state and references.

    Raises ``pickle.UnpicklingError`` (or another ``Exception``) for a record that
    is not two pickles; nothing the record names is imported or called.
    """
    found: list[Reference] = []
    buffer = io.BytesIO(data)
    unpickler = _InertUnpickler(buffer, found)
    meta = unpickler.load()
    class_refs = len(found)
    state = unpickler.load()
    del found[:class_refs]  # a class part holds no references worth listing
    args = None
    if isinstance(meta, tuple) and len(meta) == 2:
        meta, args = meta
    class_name = _class_name(meta) or "?"
    return RecordView(class_name, args, state, found)


def walk_references(value: Any) -> Iterator[Reference]:
    """Every :class:`Reference` inside a value from :func:`describe_record`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Reference):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, Instance):
            stack.extend(item.args)
            stack.append(item.state)
            stack.extend(item.items)
