"""Object records: how a persistent object becomes bytes in a storage and back.

Record format (version 1, the same layout ZODB writes, so data is exchangeable):

    record = class_pickle + state_pickle

Both are pickles (protocol 3) written back to back by one pickler.

``class_pickle`` is the object's class (a pickled global), or ``(class, args)`` when
the class defines ``__getnewargs__``: ``args`` are what ``class.__new__`` needs to
make a ghost. Readers also accept ``(class, None)`` and ``((module, name), args)``.

``state_pickle`` is ``obj.__getstate__()``. Every persistent object it refers to is
written as a *persistent reference* (pickle's ``persistent_id``) in one of these
forms:

``oid``
    8 bytes: an object of the same database whose class must be read from its own
    record (written for classes with ``__getnewargs__``).
``(oid, class)``
    an object of the same database; the class lets a reader make a ghost without
    loading the record. The common form.
``['m', (database_name, oid, class)]``
    an object of another database of the same collection ("multi-database").
``['n', (database_name, oid)]``
    the same without the class (written for a reference to a broken object).
``['w', (oid,)]`` and ``['w', (oid, database_name)]``
    a weak reference (``persistent.wref.WeakRef``) to an object of the same
    database or of another: it does not keep its object alive (pack's garbage
    collection does not follow it, :func:`references` leaves it out) and reads
    as a ``WeakRef`` whose call returns None once the object is gone.

Both pickles are written by separate picklers (the class part is cached per
class), so the state part never refers to the class part's memo; one unpickler
reading both, as ZODB's does, gets the same objects.

Globals: every global a record names (the class part, a reference's class, any
class or function in the state) is resolved by the database's
:class:`~atoll.classes.ClassPolicy` through :class:`_RecordUnpickler.find_class`, the
one place where reading decides what a record may name: persistent classes,
standard data types and what the application allows; anything else raises
:class:`~atoll.errors.ForbiddenGlobal` before it is called (``docs/security.md``).
A class that cannot be found gives a broken object (:mod:`atoll.broken`). The
writer checks the same rule, so nothing is committed that readers would refuse. A
reference to a broken object is written without its class (``oid`` or
``['n', (database_name, oid)]``), since the class cannot be named.

The writer reuses one pickler, clearing its memo between records, and replaces it
after a large record: a pickler's memo table keeps its largest size, and clearing
costs that size, so a reused pickler that once wrote a 100,000-entry mapping would
make every later record pay for it, and a big commit quadratic.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import types
from typing import TYPE_CHECKING, Any, Callable, Iterator

from persistent import Persistent
from persistent.wref import WeakRef

from atoll.broken import Broken, persistent_broken_class
from atoll.classes import DEFAULT_POLICY, ClassPolicy
from atoll.errors import BrokenModified, ForbiddenGlobal

if TYPE_CHECKING:
    from atoll.connection import Connection

__all__ = [
    "ObjectWriter",
    "ObjectReader",
    "record_class",
    "record_state",
    "references",
    "foreign_references",
    "FOREIGN_MARKS",
    "referenced_oids",
    "make_record",
    "class_pickle",
    "needs_args",
    "PersistentReference",
    "dump_state",
]

PROTOCOL = 3


class ObjectWriter:
    """Pickles the objects of one connection, turning references into oids.

    ``new_object(obj)`` is called for a persistent object with no connection yet:
    it must give the object an oid and jar (and schedule it for storing). Cross-
    database references are checked by ``cross_reference(obj)``, which returns the
    database name to write or raises InvalidObjectReference.
    """

    #: Records longer than this replace the pickler (see the module docstring).
    LARGE_RECORD = 1 << 16

    def __init__(
        self,
        jar: Connection,
        new_object: Callable[[Persistent], None],
        cross_reference: Callable[[Persistent], str],
        policy: ClassPolicy = DEFAULT_POLICY,
    ) -> None:
        self._jar = jar
        self._new_object = new_object
        self._cross_reference = cross_reference
        self._policy = policy
        self._checked_globals = policy._written_ok  # id -> class or function known good
        self._checked_types = policy._written_types  # instance types known good
        self._buffer = io.BytesIO()
        self._pickler = self._new_pickler()

    def _new_pickler(self) -> pickle.Pickler:
        pickler = pickle.Pickler(self._buffer, PROTOCOL)
        pickler.persistent_id = self._persistent_id
        return pickler

    def _persistent_id(self, obj: Any) -> Any:
        if type(obj) in _PLAIN_TYPES:
            return None
        if not isinstance(obj, Persistent) or isinstance(obj, type):
            if type(obj) is WeakRef:
                return self._weak_reference(obj)
            # Whatever the pickler writes as a global passes here first (a class or
            # function), or is reduced from an instance whose type passes here.
            if isinstance(obj, _GLOBAL_KINDS):
                if id(obj) not in self._checked_globals:
                    self._policy.check_written(obj)
            elif type(obj) not in self._checked_types:
                self._policy.check_written(obj)
            return None
        jar = obj._p_jar
        if jar is None:
            self._new_object(obj)
            jar = obj._p_jar
        klass = type(obj)
        bare = _bare_references.get(klass)
        if bare is None:
            bare = _bare_references[klass] = needs_args(klass) or issubclass(klass, Broken)
        if jar is not self._jar:
            if bare and issubclass(klass, Broken):
                return ["n", (self._cross_reference(obj), obj._p_oid)]
            return ["m", (self._cross_reference(obj), obj._p_oid, klass)]
        if bare:
            return obj._p_oid
        return obj._p_oid, klass

    def _weak_reference(self, ref: WeakRef) -> list:
        """A WeakRef's reference form. Its object, if new, is given an oid here
        (and stored), as ZODB does: a weak reference to an object never stored
        would otherwise be dangling at once."""
        if ref.oid is None:
            target = ref()
            if target._p_jar is None:
                self._new_object(target)
            ref.oid, ref.dm = target._p_oid, target._p_jar
            ref.database_name = ref.dm.db().database_name
        if ref.dm is self._jar:
            return ["w", (ref.oid,)]
        target = getattr(ref, "_v_ob", None)
        name = self._cross_reference(target) if target is not None else ref.database_name
        return ["w", (ref.oid, name)]

    def serialize(self, obj: Persistent) -> bytes:
        """The record of ``obj`` (which must have its oid already).

        Raises ForbiddenGlobal if its state names a global that readers refuse, and
        BrokenModified for a broken object."""
        try:
            return self._serialize(obj)
        except ForbiddenGlobal as exc:
            if exc.oid is None:
                exc.oid = obj._p_oid
            raise

    def _serialize(self, obj: Persistent) -> bytes:
        klass = type(obj)
        meta = _dict_state_classes.get(klass)
        if meta is None:
            meta = _dict_state_classes[klass] = _dict_state_meta(klass)
        if meta:
            # Most objects' states are their __dict__ of strings and numbers:
            # pickle.dumps of the __dict__ itself gives the bytes __getstate__'s copy
            # would, without the copy nor a persistent_id call per value (3x faster).
            attributes = obj.__dict__
            keys = tuple(attributes)
            plain = _plain_keys.get(keys)
            if plain is None:
                plain = _remember_keys(keys)
            if plain and _SCALARS.issuperset(map(type, attributes.values())):
                return meta + _dumps(attributes, PROTOCOL)
        meta = _class_pickles.get(klass)
        if meta is None:
            if isinstance(obj, Broken):
                obj.__reduce_ex__(PROTOCOL)  # raises BrokenModified, naming the object
            if needs_args(klass):
                meta = self._checked_dumps((klass, obj.__getnewargs__()))
            else:
                meta = class_pickle(klass)
        state = obj.__getstate__()
        # Most objects' states are a dict of strings and numbers: pickle.dumps gives
        # the same bytes without a persistent_id call per value (twice as fast).
        if (
            type(state) is dict
            and _SCALARS.issuperset(map(type, state.values()))
            and _SCALARS.issuperset(map(type, state))
        ):
            return meta + _dumps(state, PROTOCOL)
        buffer, pickler = self._buffer, self._pickler
        buffer.seek(0)
        buffer.truncate()
        try:
            pickler.dump(state)
        finally:
            pickler.clear_memo()  # the memo holds the objects written: let them go
        state = buffer.getvalue()
        if len(state) > self.LARGE_RECORD:
            self._pickler = self._new_pickler()
        return meta + state

    def _checked_dumps(self, value: Any) -> bytes:
        """``pickle.dumps(value)``, checking the globals it writes (a class part with
        arguments)."""
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, PROTOCOL)
        pickler.persistent_id = self._check_only
        pickler.dump(value)
        return buffer.getvalue()

    def _check_only(self, obj: Any) -> None:
        if type(obj) not in _PLAIN_TYPES and (not isinstance(obj, Persistent) or isinstance(obj, type)):
            self._policy.check_written(obj)
        return None


#: Types that never are, nor contain, a persistent object (see ObjectWriter.serialize).
_SCALARS = frozenset({str, int, float, bytes, bool, type(None)})
#: Types the pickler writes without naming a global (their items pass on their own).
_PLAIN_TYPES = _SCALARS | {tuple, list, dict}
#: Objects the pickler writes as globals (by module and name).
_GLOBAL_KINDS = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
#: class -> whether references to its instances are written without the class.
_bare_references: dict[type, bool] = {}
_dumps = pickle.dumps

_class_pickles: dict[type, bytes] = {}
#: class -> its class pickle when its state is its __dict__, else b"" (see serialize).
_dict_state_classes: dict[type, bytes] = {}
#: attribute names (a __dict__'s keys, in order) -> whether __getstate__ keeps them all.
_plain_keys: dict[tuple, bool] = {}
_PLAIN_KEYS_LIMIT = 10_000  # key tuples cached at most
_PLAIN_KEYS_LONGEST = 64  # names per tuple at most: longer ones are checked each time


def _dict_state_meta(klass: type) -> bytes:
    """The class pickle of ``klass`` if ``__getstate__`` of its instances is their
    ``__dict__`` minus volatile names (persistent's own, no slots), else b""."""
    # copyreg._slotnames: how persistent's own __getstate__ finds slots (typeshed
    # leaves out private names).
    if klass.__getstate__ is not Persistent.__getstate__ or needs_args(klass) or copyreg._slotnames(klass):  # type: ignore[attr-defined]
        return b""
    return class_pickle(klass)


def _remember_keys(keys: tuple) -> bool:
    """Whether attribute names ``keys`` are strings that ``__getstate__`` keeps
    (it drops ``_v_`` and ``_p_`` names); cached."""
    plain = all(type(key) is str and not key.startswith(("_v_", "_p_")) for key in keys)
    if len(keys) <= _PLAIN_KEYS_LONGEST:  # the cache stays small whatever the objects
        if len(_plain_keys) >= _PLAIN_KEYS_LIMIT:
            _plain_keys.clear()  # instances with ever-new attribute names
        _plain_keys[keys] = plain
    return plain


_needs_args_cache: dict[type, bool] = {}


def class_pickle(klass: type) -> bytes:
    """The class part of a record for a class without ``__getnewargs__`` (cached)."""
    data = _class_pickles.get(klass)
    if data is None:
        data = _class_pickles[klass] = pickle.dumps(klass, PROTOCOL)
    return data


def needs_args(klass: type) -> bool:
    """Whether ghosts of ``klass`` need ``__getnewargs__`` (cached per class)."""
    needs = _needs_args_cache.get(klass)
    if needs is None:
        needs = _needs_args_cache[klass] = hasattr(klass, "__getnewargs__")
    return needs


def make_record(obj: Persistent) -> bytes:
    """The record of an object that refers to no other persistent object (the root
    of a new database)."""
    return class_pickle(type(obj)) + pickle.dumps(obj.__getstate__(), PROTOCOL)


class _Source:
    """A record's bytes as the C unpickler reads them.

    With ``peek`` the unpickler takes everything left in one call and parses it in
    memory; a ``BytesIO`` has no ``peek``, and the unpickler then calls ``read`` once
    per opcode (which made an unpickler cost three times ``pickle.loads``)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes = b"", pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def peek(self, size: int = 0) -> bytes:
        return self.data[self.pos :] if self.pos else self.data

    def read(self, size: int = -1) -> bytes:
        pos = self.pos
        end = len(self.data) if size < 0 else pos + size
        self.pos = end
        return self.data[pos:end]

    def readline(self) -> bytes:
        pos = self.pos
        end = self.data.find(b"\n", pos)
        end = len(self.data) if end < 0 else end + 1
        self.pos = end
        return self.data[pos:end]


class _RecordUnpickler(pickle.Unpickler):
    """Reads records, resolving every global through a :class:`ClassPolicy`: the one
    place where what a record may name is decided.

    Resolutions are cached by the policy, so a global costs a dict lookup; nothing
    is imported or looked up on a module again (fresh name strings looked up on
    modules used to stay alive in CPython's type cache and pin the memory of
    objects loaded meanwhile: see docs/benchmark-notes.md, "The cause, found")."""

    def __init__(self, source: _Source, policy: ClassPolicy, connection: Any = None) -> None:
        super().__init__(source)
        self._resolved = policy.resolved
        self._policy = policy
        self._connection = connection

    def find_class(self, module: str, name: str) -> Any:
        obj = self._resolved.get((module, name))
        if obj is None:
            obj = self._policy.resolve(self._connection, module, name)
        return obj


#: Records longer than this are read by a fresh unpickler (see ObjectReader.__init__).
_REUSE_LIMIT = 1024

#: Classes found to be persistent (so fit for a reference or a record's class part).
_persistent_classes: set[type] = set()


def _persistent_class(klass: Any, policy: ClassPolicy, connection: Any = None) -> type[object]:
    """``klass``, as a record's class part or a reference gives it, checked to be a
    persistent class: a ``(module, name)`` pair is resolved, a broken stand-in made
    persistent."""
    try:
        if klass in _persistent_classes:
            return klass
    except TypeError:  # unhashable: not a class
        pass
    if type(klass) is tuple and len(klass) == 2 and all(type(part) is str for part in klass):
        klass = policy.resolve(connection, *klass)
    if isinstance(klass, type):
        if issubclass(klass, Broken):
            return persistent_broken_class(klass)
        if issubclass(klass, Persistent):
            _persistent_classes.add(klass)
            return klass
    raise pickle.UnpicklingError(f"a record or reference names {klass!r}, which is not a persistent class")


def _class_and_args(meta: Any, policy: ClassPolicy, connection: Any = None) -> tuple[type[object], tuple | None]:
    if type(meta) is tuple and len(meta) == 2 and not all(type(part) is str for part in meta):
        klass, args = meta
        if args is not None and type(args) is not tuple:
            raise pickle.UnpicklingError(f"a record's class part has arguments {args!r}, not a tuple")
    else:
        klass, args = meta, None
    return _persistent_class(klass, policy, connection), args


class ObjectReader:
    """Unpickles records for one connection, turning references into objects.

    ``ghost(oid, klass)`` returns the connection's object for an oid of its own
    database (from its cache or as a new ghost); ``klass`` may be None when the
    reference does not carry it. ``foreign(database_name, oid, klass)`` does the same
    for another database of the collection. ``weak(oid, database_name)`` makes the
    ``WeakRef`` of a weak reference (database_name None for the record's own).
    ``policy`` decides which globals records may name; ``connection`` is handed to
    its class factory.
    """

    def __init__(
        self,
        ghost: Callable[[bytes, type[object] | None], Persistent],
        foreign: Callable[[str, bytes, type[object] | None], Persistent],
        weak: Callable[[bytes, str | None], WeakRef] | None = None,
        policy: ClassPolicy = DEFAULT_POLICY,
        connection: Any = None,
    ) -> None:
        self._ghost = ghost
        self._foreign = foreign
        self._weak = weak
        self._policy = policy
        self._connection = connection
        # One unpickler reused for loads of small records (made lazily): a new one
        # per record costs more than loading a small state. Not while one load runs
        # inside another (a __setstate__ that touches a ghost): _busy. Not for large
        # records: an unpickler's memo table keeps its largest size, and clearing it
        # after every load costs that size (0.5 ms once a 10,000-entry mapping was read).
        self._source = _Source()
        self._reused: _RecordUnpickler | None = None
        self._busy = False

    def _persistent_load(self, ref: Any) -> Persistent:
        if type(ref) is tuple:
            oid, klass = ref
            try:
                known = klass in _persistent_classes
            except TypeError:
                known = False
            if not known:
                klass = _persistent_class(klass, self._policy, self._connection)
            return self._ghost(oid, klass)
        if type(ref) is bytes:
            return self._ghost(ref, None)
        if type(ref) is list and len(ref) == 2:
            kind, args = ref
            if kind == "m":
                database_name, oid, klass = args
                klass = _persistent_class(klass, self._policy, self._connection)
                return self._foreign(database_name, oid, klass)
            if kind == "n":
                database_name, oid = args
                return self._foreign(database_name, oid, None)
            if kind == "w" and self._weak is not None:
                return self._weak(args[0], args[1] if len(args) > 1 else None)
        raise pickle.UnpicklingError(f"unknown persistent reference {ref!r}")

    def ghost_from_record(self, data: bytes, oid: bytes | None = None) -> Persistent:
        """A new ghost of the class a record names (not yet in any cache)."""
        try:
            unpickler = _RecordUnpickler(_Source(data), self._policy, self._connection)
            klass, args = _class_and_args(unpickler.load(), self._policy, self._connection)
        except ForbiddenGlobal as exc:
            raise _located(exc, oid) from None
        return klass.__new__(klass, *args) if args else klass.__new__(klass)

    def load_state(self, data: bytes, klass: type | None = None, oid: bytes | None = None) -> Any:
        """The state part of a record, with references resolved.

        ``klass``, the class the record is expected to name, lets the class part be
        skipped when it is the one this module writes. ``oid`` names the object in
        errors.
        """
        try:
            prefix = _class_pickles.get(klass) if klass is not None else None
            if prefix is not None and data.startswith(prefix):
                # A state that refers to the class part's memo (ZODB pickles both
                # parts with one pickler) fails when read alone, and is read whole.
                try:
                    return self._load(data, len(prefix), False)
                except pickle.UnpicklingError:
                    pass
            return self._load(data, 0, True)
        except ForbiddenGlobal as exc:
            raise _located(exc, oid) from None

    def _load(self, data: bytes, offset: int, whole: bool) -> Any:
        if self._busy or len(data) > _REUSE_LIMIT:
            fresh = self._new_unpickler(_Source(data, offset))
            if whole:
                fresh.load()
            return fresh.load()
        self._busy = True
        source = self._source
        source.data, source.pos = data, offset
        unpickler = self._reused
        if unpickler is None:
            unpickler = self._reused = self._new_unpickler(source)
        try:
            if whole:
                unpickler.load()
            state = unpickler.load()
            if source.pos != len(data):  # bytes left in the unpickler's buffer
                self._reused = None
            return state
        except BaseException:
            self._reused = None  # it may hold half a record
            raise
        finally:
            unpickler.memo.clear()  # the objects loaded: let them go
            source.data = b""
            self._busy = False

    def _new_unpickler(self, source: _Source) -> _RecordUnpickler:
        unpickler = _RecordUnpickler(source, self._policy, self._connection)
        unpickler.persistent_load = self._persistent_load
        return unpickler

    def set_state(self, obj: Persistent, data: bytes) -> None:
        """Give ``obj`` the state stored in ``data``."""
        obj.__setstate__(self.load_state(data, type(obj), obj._p_oid))


def _located(exc: ForbiddenGlobal, oid: bytes | None) -> ForbiddenGlobal:
    if exc.oid is None:
        exc.oid = oid
    return exc


def record_class(data: bytes, policy: ClassPolicy = DEFAULT_POLICY) -> type[object]:
    """The class a record names, resolved by ``policy`` (a broken stand-in when it
    cannot be found; ForbiddenGlobal when the policy refuses it)."""
    return _class_and_args(_class_part(data, policy), policy)[0]


def _class_part(data: bytes, policy: ClassPolicy = DEFAULT_POLICY) -> Any:
    """The first pickle of a record (its class, or class and arguments)."""
    return _RecordUnpickler(_Source(data), policy).load()


class _Placeholder:
    """Stands in for any object while a record is scanned for references.

    Scanning must not need the application's classes, nor run their code: every
    global unpickles as this class, which accepts any construction or state.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _ScanningUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, found: list) -> None:
        super().__init__(_Source(data))
        self._found = found

    def find_class(self, module: str, name: str) -> type:
        return _Placeholder

    def persistent_load(self, ref: Any) -> _Placeholder:
        if isinstance(ref, tuple):
            self._found.append((None, ref[0]))
        elif isinstance(ref, bytes):
            self._found.append((None, ref))
        elif isinstance(ref, list) and len(ref) == 2 and ref[0] in ("m", "n"):
            self._found.append((ref[1][0], ref[1][1]))
        return _Placeholder()


def references(data: bytes) -> list[tuple[str | None, bytes]]:
    """Every strong persistent reference in a record, as ``(database_name, oid)``;
    database_name is None for the record's own database. Weak references
    (``['w', ...]``) are left out: they must not keep an object alive.

    Imports nothing and runs no code of the record's classes (every global reads as
    an inert placeholder), so pack and tools can scan any record. A record without
    a ``Q`` or ``P`` byte has no persistent reference (BINPERSID, PERSID) and is not
    unpickled at all."""
    if b"Q" not in data and b"P" not in data:
        return []
    found: list[tuple[str | None, bytes]] = []
    scanner = _ScanningUnpickler(data, found)
    scanner.load()
    scanner.load()
    return found


#: A record with a cross-database reference holds the string "m" as pickle protocol
#: 3 (BINUNICODE) or 4 (SHORT_BINUNICODE) writes it: records without either have none.
FOREIGN_MARKS = (b"X\x01\x00\x00\x00m", b"\x8c\x01m")
_MEMO_PUT_SIZES = {ord("q"): 2, ord("r"): 5, 0x94: 1}  # BINPUT, LONG_BINPUT, MEMOIZE


def foreign_references(data: bytes) -> list[tuple[str, bytes]] | None:
    """The cross-database reference of a record that has at most one, found by its
    bytes (a quarter of the time :func:`references` takes), for read-ahead. None
    when there may be more, or the reference is not laid out as a pickler writes
    ``['m', (name, oid, class)]``: then use :func:`references`.

    Layout: the string "m", the name, the 8-byte oid, each string maybe followed by
    a memo put. A second reference would write "m" as a memo get after a MARK.
    """
    for mark in FOREIGN_MARKS:
        at = data.find(mark)
        if at >= 0:
            break
    else:
        return []
    at += len(mark)
    put = data[at : at + 1]
    if put == b"q":
        again = b"(h" + data[at + 1 : at + 2]
    elif put == b"r":
        again = b"(j" + data[at + 1 : at + 5]
    else:
        return None  # no memo put (or protocol 4's MEMOIZE): cannot rule out more
    at += len(again) - 1
    if data.find(again, at) >= 0:
        return None
    op = data[at : at + 1]
    if op == b"X":
        size = int.from_bytes(data[at + 1 : at + 5], "little")
        name, at = data[at + 5 : at + 5 + size], at + 5 + size
    elif op == b"\x8c" and at + 1 < len(data):
        size = data[at + 1]
        name, at = data[at + 2 : at + 2 + size], at + 2 + size
    else:
        return None
    if at < len(data):
        at += _MEMO_PUT_SIZES.get(data[at], 0)
    oid = data[at + 2 : at + 10]
    if data[at : at + 2] not in (b"C\x08", b"U\x08") or len(oid) != 8:
        return None
    try:
        return [(name.decode("utf-8"), oid)]
    except UnicodeDecodeError:
        return None


def referenced_oids(data: bytes) -> Iterator[bytes]:
    """The oids a record references in its own database (for pack's GC)."""
    return (oid for database_name, oid in references(data) if database_name is None)


def record_state(data: bytes, policy: ClassPolicy = DEFAULT_POLICY) -> tuple[int, Any]:
    """Offset where the state pickle starts, and the state with references kept
    as :class:`PersistentReference` values (for conflict resolution). Globals are
    resolved by ``policy``, as when loading."""
    source = _Source(data)
    unpickler = _RecordUnpickler(source, policy)
    unpickler.persistent_load = PersistentReference
    unpickler.load()
    offset = source.pos
    return offset, unpickler.load()


class PersistentReference:
    """A persistent reference kept as data, while states are merged without a connection.

    ``oid``, ``database_name`` (None for the record's own database), ``klass``
    (None when the reference does not carry it) and ``weak`` (a
    ``persistent.wref.WeakRef``) describe the object referred to, as ZODB's
    ``PersistentReference`` does. Two references to the same object are equal;
    comparing references to different objects raises ValueError, as in ZODB: their
    objects' order is unknown without loading them, so a merge that needs it (a
    BTree bucket whose keys are persistent objects) must fail as a conflict rather
    than guess.
    """

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    @property
    def oid(self) -> bytes:
        """The oid of the object referred to."""
        ref = self.ref
        if isinstance(ref, tuple):
            return ref[0]
        if isinstance(ref, bytes):
            return ref
        return ref[1][0] if ref[0] == "w" else ref[1][1]

    @property
    def database_name(self) -> str | None:
        """The database of the object: None for the record's own database."""
        ref = self.ref
        if isinstance(ref, list):
            args = ref[1]
            if ref[0] == "w":
                return args[1] if len(args) > 1 else None
            return args[0]
        return None

    @property
    def klass(self) -> Any:
        """The class the reference names, or None when it names none."""
        ref = self.ref
        if isinstance(ref, tuple):
            return ref[1]
        if isinstance(ref, list) and ref[0] == "m":
            return ref[1][2]
        return None

    @property
    def weak(self) -> bool:
        """Whether this is a weak reference (``persistent.wref.WeakRef``)."""
        return isinstance(self.ref, list) and self.ref[0] == "w"

    @property
    def key(self) -> tuple[str | None, bytes]:
        """``(database_name, oid)``: which object this is."""
        return self.database_name, self.oid

    def _same(self, other: object) -> bool:
        if not isinstance(other, PersistentReference):
            return False
        if self is other or self.key == other.key:
            return True
        raise ValueError("can't reliably compare against different PersistentReferences")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PersistentReference):
            return NotImplemented
        return self._same(other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, PersistentReference):
            return NotImplemented
        return not self._same(other)

    # Ordering: equal references are neither less nor greater; different ones raise.
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PersistentReference):
            return NotImplemented
        self._same(other)
        return False

    __gt__ = __lt__

    def __le__(self, other: object) -> bool:
        if not isinstance(other, PersistentReference):
            return NotImplemented
        return self._same(other)

    __ge__ = __le__

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"PersistentReference({self.ref!r})"


def dump_state(state: Any) -> bytes:
    """Pickle a state whose references are :class:`PersistentReference` values."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, PROTOCOL)
    pickler.persistent_id = lambda obj: obj.ref if isinstance(obj, PersistentReference) else None
    pickler.dump(state)
    return buf.getvalue()
