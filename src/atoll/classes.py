"""Which globals a record may name, and where they come from.

A record is a pickle: besides data it names *globals* (module and name), which
unpickling would import and, for some, call. Whoever can write a record (the
database file, a PostgreSQL row) could otherwise make every reader run
``os.system``. The record reader (:mod:`atoll.serialize`) asks a
:class:`ClassPolicy`, one per database, for every global; this module is that
policy. ``docs/security.md`` tells the threat model; the rule is:

1. **Aliases first.** ``class_aliases`` maps an old dotted name to a new one: an
   exact ``module.Name`` entry first, then the longest entry naming the module or
   a package above it (a whole-module move).
2. **Standard data types** (:data:`STANDARD_GLOBALS`, exact names: builtins'
   containers and scalars, ``datetime``, ``decimal``, ``uuid``, ``collections``,
   ``fractions``, ``copyreg``'s reconstructors, ``persistent.wref``) are allowed.
3. Anything else is asked of ``db.classFactory(connection, module, name)``. The
   default factory (:meth:`ClassPolicy.find_global`) **never runs a module's code
   the application did not ask for**:

   * a module already imported is looked up in its namespace (nothing runs);
   * a module not yet imported is imported only if the application allowed it
     (``allowed_globals`` covers it, it is an alias target, or it is one of
     ``persistent``'s or ``BTrees``'s own modules);
   * a module that does not exist (found without running anything), or a name
     missing from its module, gives a stand-in :mod:`broken <atoll.broken>` class;
   * a module that exists but is neither imported nor allowed is refused: the
     record names something the application never loaded.
4. What comes back is accepted only if it is a **persistent class** (a subclass of
   ``persistent.Persistent``, broken stand-ins included), a standard global (the
   same object), or allowed by ``allowed_globals``: an exact name, or a module
   prefix when the object was also *defined* under an allowed prefix (so
   ``from os import system`` in an allowed module smuggles nothing in). Anything
   else raises :class:`~atoll.errors.ForbiddenGlobal`; nothing was called.

The writer checks the same rule (:meth:`ClassPolicy.check_written`), so nothing is
committed that could not be read back.

Resolutions are cached per policy, so the rule costs a dict lookup per global read.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import threading
import types
from typing import Any, Callable, Iterable, Mapping

from persistent import Persistent

from atoll.broken import Broken, broken_class, class_store_error
from atoll.errors import ForbiddenGlobal

__all__ = ["ClassPolicy", "STANDARD_GLOBALS", "DEFAULT_POLICY", "split_dotted"]

#: Exact names of the non-persistent globals every record may name.
STANDARD_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", name) for name in (
        "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int",
        "float", "complex", "bool", "object", "slice", "range", "Ellipsis", "NotImplemented",
    )]
    + [("copyreg", name) for name in ("_reconstructor", "__newobj__", "__newobj_ex__")]
    + [("_codecs", "encode")]  # how protocol 2 writes bytes
    + [("datetime", name) for name in ("date", "time", "datetime", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"), ("uuid", "SafeUUID")]
    + [("collections", name) for name in (
        "OrderedDict", "deque", "defaultdict", "Counter", "ChainMap", "UserDict", "UserList",
        "UserString",
    )]
    + [("zoneinfo", "ZoneInfo"), ("zoneinfo", "ZoneInfo._unpickle")]
    + [("persistent.wref", "WeakRef"), ("persistent.wref", "PersistentWeakKeyDictionary")]
)

#: Why a global is refused (the same words when reading and when writing).
REFUSED = (
    "records may name only persistent classes, standard data types and what allowed_globals "
    "allows (see docs/security.md)"
)

#: Modules whose persistent classes may be imported on demand (the packages atoll
#: itself builds on); application modules need ``allowed_globals`` or an import.
_OWN_MODULES = re.compile(r"persistent(\.(mapping|list|dict|wref))?|BTrees\.[A-Z]\w*")

#: Kinds of objects the pickler writes as globals, besides classes.
_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType)


def split_dotted(dotted: str) -> tuple[str, str]:
    """``'pkg.module.Name'`` -> ``('pkg.module', 'Name')``; ``'pkg.module:Outer.Inner'``
    names a nested class."""
    if ":" in dotted:
        module, _, name = dotted.partition(":")
    else:
        module, _, name = dotted.rpartition(".")
    if not module or not name:
        raise ValueError(f"{dotted!r} is not a dotted name of the form 'module.Name'")
    return module, name


def _covers(prefixes: frozenset[str], module: str) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    while True:
        if module in prefixes:
            return True
        module, dot, _ = module.rpartition(".")
        if not dot:
            return False


def _static_lookup(namespace: Any, name: str) -> Any:
    """``namespace.name`` (dotted for nested classes) read from ``__dict__`` only: no
    module ``__getattr__``, no descriptor, nothing of the module's runs."""
    obj = namespace
    for part in name.split("."):
        if isinstance(obj, type):
            for klass in obj.__mro__:
                if part in klass.__dict__:
                    obj = klass.__dict__[part]
                    break
            else:
                return None
        else:
            attributes = getattr(obj, "__dict__", None)
            if type(attributes) is not dict or part not in attributes:
                return None
            obj = attributes[part]
    return obj


def _find_spec(module: str) -> Any:
    """The import spec of ``module``, found without importing (so without running)
    anything: a package not imported yet is searched along its spec's path."""
    if module in sys.modules:
        return getattr(sys.modules[module], "__spec__", None) or True
    parent, dot, _ = module.rpartition(".")
    try:
        if not dot or parent in sys.modules:
            return importlib.util.find_spec(module)
        parent_spec = _find_spec(parent)
        locations = getattr(parent_spec, "submodule_search_locations", None)
        if not locations:
            return None
        return importlib.machinery.PathFinder.find_spec(module, list(locations))
    except (ImportError, ValueError, AttributeError):
        return None


def _defined_name(obj: Any) -> tuple[str, str] | None:
    """Where a class or function says it was defined: ``(module, qualname)``."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(module, str) and isinstance(name, str):
        return module, name
    return None


def _is_persistent_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, (Persistent, Broken))


class ClassPolicy:
    """The rule of the module docstring for one database.

    ``class_aliases`` maps old dotted names (classes or modules) to new ones;
    ``allowed_globals`` lists module prefixes (``'myapp'`` covers ``myapp.models``)
    and exact dotted names that records may name besides persistent classes and
    standard types. ``factory(connection, module, name)`` is the class factory
    (``db.classFactory``); by default :meth:`find_global`.
    """

    def __init__(
        self,
        database_name: str | None = None,
        class_aliases: Mapping[str, str] | None = None,
        allowed_globals: Iterable[str] = (),
        factory: Callable[[Any, str, str], Any] | None = None,
    ) -> None:
        self.database_name = database_name
        self.class_aliases = dict(class_aliases or {})
        for old, new in self.class_aliases.items():
            if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
                raise ValueError(f"class_aliases maps dotted names to dotted names, not {old!r}: {new!r}")
        names = list(allowed_globals)
        for entry in names:
            if not isinstance(entry, str) or not entry or entry.startswith(".") or entry.endswith("."):
                raise ValueError(f"allowed_globals holds module prefixes or dotted names, not {entry!r}")
        self.allowed_globals = tuple(names)
        # An entry may be read both ways: as a module prefix and as module + name.
        self._allowed_prefixes = frozenset(names)
        self._allowed_exact = frozenset(split_dotted(entry) for entry in names if "." in entry or ":" in entry)
        # Alias targets may be imported: the application named them. A target is a
        # module (and what is inside it) or a class (and then its module).
        self._alias_modules = frozenset(self.class_aliases.values())
        self._alias_class_modules = frozenset(
            split_dotted(new)[0] for new in self.class_aliases.values() if "." in new or ":" in new
        )
        self.factory = factory or (lambda connection, module, name: self.find_global(module, name))
        self._lock = threading.Lock()
        #: (module, name) as read -> the object it resolved to (not broken ones).
        self.resolved: dict[tuple[str, str], Any] = {}
        #: (module, name) -> (stand-in class, len(sys.modules) when found missing).
        self._missing: dict[tuple[str, str], tuple[type, int]] = {}
        self._standard: dict[tuple[str, str], Any] = {}
        self._written_ok: dict[int, Any] = {}  # id -> a global the writer checked (kept alive)
        self._written_types: set[type] = set()  # instance types whose reduction names no string global

    # -- reading -------------------------------------------------------------------

    def resolve(self, connection: Any, module: str, name: str) -> Any:
        """The object a record's global ``module.name`` stands for, or
        :class:`ForbiddenGlobal` (the reader's ``find_class``; cached)."""
        key = (module, name)
        obj = self.resolved.get(key)
        if obj is not None:
            return obj
        missing = self._missing.get(key)
        if missing is not None and missing[1] == len(sys.modules):
            return missing[0]
        module, name = self.alias(module, name)
        if (module, name) in STANDARD_GLOBALS:
            obj = self.standard(module, name)
        else:
            obj = self.factory(connection, module, name)
            self.check_loaded(module, name, obj)
        if isinstance(obj, type) and issubclass(obj, Broken):
            self._missing[key] = (obj, len(sys.modules))
        else:
            self.resolved[key] = obj
        return obj

    def alias(self, module: str, name: str) -> tuple[str, str]:
        """``module.name`` after ``class_aliases``."""
        aliases = self.class_aliases
        if not aliases:
            return module, name
        new = aliases.get(f"{module}.{name}") or aliases.get(f"{module}:{name}")
        if new is not None:
            return split_dotted(new)
        head, tail = module, ""
        while True:
            new = aliases.get(head)
            if new is not None:
                return new + tail, name
            head, dot, last = head.rpartition(".")
            if not dot:
                return module, name
            tail = f".{last}{tail}"

    def standard(self, module: str, name: str) -> Any:
        """The object of a :data:`STANDARD_GLOBALS` name (imported once)."""
        obj = self._standard.get((module, name))
        if obj is None:
            obj = _static_lookup(importlib.import_module(module), name)
            self._standard[(module, name)] = obj
        return obj

    def may_import(self, module: str, name: str) -> bool:
        """Whether the default factory may import ``module`` to find ``name``."""
        return (
            _covers(self._allowed_prefixes, module)
            or (module, name) in self._allowed_exact
            or _covers(self._alias_modules, module)
            or module in self._alias_class_modules
            or _OWN_MODULES.fullmatch(module) is not None
        )

    def find_global(self, module: str, name: str) -> Any:
        """The default class factory: step 3 of the module docstring."""
        loaded = sys.modules.get(module)
        if loaded is None:
            if not self.may_import(module, name):
                if _find_spec(module) is None:
                    return broken_class(module, name, f"no module named {module!r}")
                raise self.forbidden(
                    module, name,
                    f"its module is not imported, and allowed_globals does not allow it: import "
                    f"{module} before loading, or allow it with allowed_globals=[{module!r}]",
                )
            try:
                loaded = importlib.import_module(module)
            except ImportError as exc:
                return broken_class(module, name, f"importing {module} failed: {exc}")
        obj = _static_lookup(loaded, name)
        if obj is None:
            return broken_class(module, name, f"module {module} has no {name!r}")
        return obj

    def check_loaded(self, module: str, name: str, obj: Any) -> None:
        """Step 4 of the module docstring: refuse ``obj`` unless allowed."""
        if _is_persistent_class(obj) or self.allowed_object(module, name, obj):
            return
        raise self.forbidden(module, name, REFUSED)

    def allowed_object(self, module: str, name: str, obj: Any) -> bool:
        """Whether a non-persistent ``obj`` found as ``module.name`` may be used."""
        if (module, name) in self._allowed_exact:
            return True
        defined = _defined_name(obj)
        if defined is None or not isinstance(obj, (type, *_FUNCTION_TYPES)):
            return False
        if defined in STANDARD_GLOBALS:
            return self.standard(*defined) is obj
        return (
            _covers(self._allowed_prefixes, module)
            and (_covers(self._allowed_prefixes, defined[0]) or defined in self._allowed_exact)
        )

    def forbidden(self, module: str, name: str, reason: str) -> ForbiddenGlobal:
        """The error refusing ``module.name`` in this database."""
        return ForbiddenGlobal(f"{module}.{name}", reason, database_name=self.database_name)

    # -- writing ---------------------------------------------------------------------

    def check_written(self, obj: Any) -> None:
        """Raise :class:`ForbiddenGlobal` if pickling ``obj`` (a class, a function, or
        an instance whose reduction names a global) writes a global that the reader
        would refuse; broken stand-ins raise BrokenModified. Cached per object/type."""
        if isinstance(obj, type) or isinstance(obj, _FUNCTION_TYPES):
            if id(obj) in self._written_ok:
                return
            if isinstance(obj, type) and issubclass(obj, Broken):
                raise class_store_error(obj)
            defined = _defined_name(obj)
            if defined is not None and "<" in defined[1]:
                return  # a lambda or a local class: pickle cannot name it, and says so
            if not _is_persistent_class(obj) and (defined is None or not self._readable(defined, obj)):
                module, _, name = (f"{defined[0]}.{defined[1]}" if defined else repr(obj)).rpartition(".")
                raise self.forbidden(module, name, REFUSED)
            with self._lock:
                self._written_ok[id(obj)] = obj
            return
        kind = type(obj)
        if kind in self._written_types:
            return
        reduce = getattr(obj, "__reduce_ex__", None)
        reduced = reduce(3) if reduce is not None else None
        if isinstance(reduced, str):  # pickled as the global module.reduced
            module = getattr(obj, "__module__", None) or pickle_whichmodule(obj, reduced)
            if not self._readable((module, reduced), obj):
                raise self.forbidden(module, reduced, REFUSED)
            return
        with self._lock:
            self._written_types.add(kind)

    def _readable(self, defined: tuple[str, str], obj: Any) -> bool:
        """Whether a reader with this policy accepts ``obj`` written as ``defined``."""
        if defined in STANDARD_GLOBALS:
            try:
                return self.standard(*defined) is obj
            except ImportError:
                return False
        return self.allowed_object(*defined, obj)


def pickle_whichmodule(obj: Any, name: str) -> str:
    """The module pickle would write for ``obj`` saved by ``name``."""
    import pickle

    return pickle.whichmodule(obj, name)  # type: ignore[attr-defined]  # not in typeshed (nor in pickle.__all__)


#: The policy of code that reads records without a database (defaults only).
DEFAULT_POLICY = ClassPolicy()
