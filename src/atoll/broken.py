"""Broken objects: what a record becomes when its class cannot be found.

A class that was renamed or removed must not make a database unreadable: its
records load as instances of a stand-in class named after it (module and name as
the record gives them), subclasses of :class:`Broken`. They keep what the record
held (``__Broken_state__``, and the arguments the record passed to the class, if
any) so that nothing is lost, and refuse to be changed (:class:`BrokenModified`),
since writing them back could only lose what they are. Containers that refer to
them (a BTree's buckets, a mapping, an object of another database) load as usual.

Two kinds, as in ZODB: :class:`PersistentBroken` for records (and references to
them), plain :class:`Broken` for a missing class used inside a state (an instance
of an ordinary class stored in a persistent object's attribute). A missing class is
logged once per process, not once per object.

The fix is to bring the class back under its old name, or to map the old name to
the new one with ``DB(class_aliases=...)``; ``atoll.migrate.rename_classes`` then
rewrites the records so that the alias can go.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from persistent import Persistent

from atoll.errors import BrokenModified
from atoll.ids import oid_repr

__all__ = ["Broken", "PersistentBroken", "broken_class", "persistent_broken_class", "is_broken", "class_store_error"]

logger = logging.getLogger(__name__)


class Broken:
    """An instance of a class that could not be found; read-only.

    The class attributes ``__Broken_module__`` and ``__Broken_name__`` are the
    missing class's module and name; instances keep ``__Broken_state__`` (what
    ``__setstate__`` was given), ``__Broken_newargs__`` and ``__Broken_initargs__``.
    """

    __Broken_module__ = ""
    __Broken_name__ = ""
    __Broken_reason__ = ""  # why the class could not be found (for the log and errors)

    def __new__(cls, *args: Any, **kwargs: Any) -> Broken:
        obj = super().__new__(cls)
        if args:
            obj.__dict__["__Broken_newargs__"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            self.__dict__["__Broken_initargs__"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["__Broken_state__"] = state

    def __getstate__(self) -> Any:
        return self.__dict__.get("__Broken_state__")

    def __setattr__(self, name: str, value: Any) -> None:
        raise BrokenModified(f"cannot change {_describe(self)}: {_why(type(self))}")

    def __delattr__(self, name: str) -> None:
        raise BrokenModified(f"cannot change {_describe(self)}: {_why(type(self))}")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise BrokenModified(f"cannot store {_describe(self)}: {_why(type(self))}")

    def __repr__(self) -> str:
        return f"<{_describe(self)}>"


class PersistentBroken(Broken, Persistent):
    """A broken object loaded from a record: persistent, so references to it work
    and its oid is kept, but never written back (changing it raises)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith(("_p_", "_v_")):
            Persistent.__setattr__(self, name, value)
        else:
            Broken.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith(("_p_", "_v_")):
            Persistent.__delattr__(self, name)
        else:
            Broken.__delattr__(self, name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise BrokenModified(f"cannot store {_describe(self)}: {_why(type(self))}")


def class_store_error(klass: type[Broken]) -> BrokenModified:
    """The error for writing the stand-in class ``klass`` itself (a state that
    refers to the class as a global)."""
    return BrokenModified(f"cannot store broken class {_dotted(klass)}: {_why(klass)}")


def _dotted(klass: type[Broken]) -> str:
    return f"{klass.__Broken_module__}.{klass.__Broken_name__}"


def _why(klass: type[Broken]) -> str:
    reason = klass.__Broken_reason__
    return (
        f"its class {_dotted(klass)} cannot be found ({reason}); restore it, or map its old name "
        "with class_aliases"
    )


def _describe(obj: Broken) -> str:
    text = f"broken {_dotted(type(obj))} object"
    if isinstance(obj, Persistent):
        oid = obj._p_oid
        if oid is not None:
            text += f" {oid_repr(oid)}"
            jar = obj._p_jar
            if jar is not None:
                text += f" of database {jar.db().database_name!r}"
    return text


_lock = threading.Lock()
_classes: dict[tuple[str, str], type[Broken]] = {}  # (module, name) -> its Broken class
_persistent: dict[tuple[str, str], type[PersistentBroken]] = {}  # the same, persistent


def _make(base: type, module: str, name: str, reason: str) -> type:
    return type(
        name.rpartition(".")[2],
        (base,),
        {
            "__module__": module,
            "__qualname__": name,
            "__Broken_module__": module,
            "__Broken_name__": name,
            "__Broken_reason__": reason,
        },
    )


def broken_class(module: str, name: str, reason: str = "not found") -> type[Broken]:
    """The (one, cached) stand-in class for the missing class ``module.name``.

    The first call for a name logs a warning: one line per missing class."""
    key = (module, name)
    klass = _classes.get(key)
    if klass is None:
        with _lock:
            klass = _classes.get(key)
            if klass is None:
                klass = _classes[key] = _make(Broken, module, name, reason)
                logger.warning(
                    "class %s.%s cannot be found (%s): its objects load as broken, read-only objects",
                    module, name, reason,
                )
    return klass


def persistent_broken_class(klass: type[Broken]) -> type[PersistentBroken]:
    """The persistent twin of a stand-in class made by :func:`broken_class`."""
    if issubclass(klass, PersistentBroken):
        return klass
    key = (klass.__Broken_module__, klass.__Broken_name__)
    twin = _persistent.get(key)
    if twin is None:
        with _lock:
            twin = _persistent.get(key)
            if twin is None:
                twin = _persistent[key] = _make(PersistentBroken, *key, klass.__Broken_reason__)
    return twin


def is_broken(obj: Any) -> bool:
    """Whether ``obj`` is a broken object or a stand-in class."""
    return isinstance(obj, Broken) or (isinstance(obj, type) and issubclass(obj, Broken))
