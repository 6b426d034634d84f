"""What makes an object unstorable: the message of :class:`~atoll.errors.UnpicklableError`.

When pickling an object's state fails, pickle says what it could not save (``cannot
pickle '_thread.lock' object``) but not where it is. This module finds the place:
it tries each part of the state on its own, goes into the first part that fails, and
so on down, giving the attribute path (``.handlers[2].lock``) and what sits there.
It runs only after a failure, so its repeated pickling costs nothing in a commit.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any, Iterator

from persistent import Persistent

__all__ = ["describe"]

#: How deep the search goes; deeper culprits are reported by their path's start.
_MAX_DEPTH = 24
#: Parts tried per container (a huge list is reported by its first failing items).
_MAX_PARTS = 10_000


def describe(obj: Persistent, state: Any, error: BaseException) -> str:
    """Where in ``obj`` (whose ``__getstate__`` gave ``state``) the unpicklable
    part is, and what it is: ``".lock is a _thread.lock"``."""
    klass = type(obj)
    if not _picklable(klass):
        return f"its class {_class_name(klass)} cannot be pickled ({_class_problem(klass)})"
    if isinstance(error, RecursionError):
        path = _deep_path(state)
        where = f"{path} " if path else "its state "
        return f"{where}nests containers deeper than pickle can follow (Python's recursion limit)"
    path, culprit = _find(state)
    if culprit is state and not path:
        return f"its state is a {_type_name(culprit)}, which pickle cannot save ({error})"
    return f"{path or 'its state'} is {_what(culprit)}, which pickle cannot save ({error})"


def _find(state: Any) -> tuple[str, Any]:
    """The path to the deepest unpicklable part of ``state``, and that part."""
    path, value = "", state
    for depth in range(_MAX_DEPTH):
        for step, part in _parts(value, top=depth == 0):
            if not _picklable(part):
                path, value = path + step, part
                break
        else:
            return path, value  # every part pickles: the container itself does not
    return path + "...", value


def _deep_path(state: Any) -> str:
    """The start of the path along which ``state`` nests too deep."""
    path, value = "", state
    for depth in range(_MAX_DEPTH // 2):
        for step, part in _parts(value, top=depth == 0):
            if isinstance(part, (dict, list, tuple, set, frozenset)) or hasattr(part, "__dict__"):
                path, value = path + step, part
                break
        else:
            return path
    return path + "..."


def _parts(value: Any, top: bool) -> Iterator[tuple[str, Any]]:
    """(path step, part) for what ``value`` holds; at the top, a dict's keys are
    attribute names."""
    if isinstance(value, Persistent):
        return  # pickled as a reference: never the culprit inside another record
    if top and isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, dict) or v is None for v in value
    ):
        # (__dict__, slots) from the __getstate__ of a class with __slots__
        for attributes in value:
            if attributes:
                yield from _parts(attributes, top=True)
        return
    if isinstance(value, dict):
        for count, (key, item) in enumerate(value.items()):
            if count == _MAX_PARTS:
                return
            if top and isinstance(key, str):
                yield f".{key}", item
            else:
                yield f" key {key!r}", key
                yield f"[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value[:_MAX_PARTS]):
            yield f"[{index}]", item
    elif isinstance(value, (set, frozenset)):
        for count, item in enumerate(value):
            if count == _MAX_PARTS:
                return
            yield f" element {item!r}", item
    elif not isinstance(value, type) and isinstance(getattr(value, "__dict__", None), dict):
        for name, item in list(vars(value).items())[:_MAX_PARTS]:
            yield f".{name}", item


class _ReferencesAsIds(pickle.Pickler):
    """Pickles persistent objects as references, as a record does."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Persistent) and not isinstance(obj, type):
            return id(obj), type(obj)  # a reference names the class: it must pickle
        return None


def _picklable(value: Any) -> bool:
    try:
        _ReferencesAsIds(io.BytesIO(), 3).dump(value)
    except RecursionError:
        return False
    except Exception:  # whatever pickle or the value's __reduce__ raises
        return False
    return True


def _class_name(klass: type) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"


def _class_problem(klass: type) -> str:
    if "<locals>" in klass.__qualname__:
        return "it is defined inside a function; only classes importable by module and name can be stored"
    return f"{klass.__module__}.{klass.__qualname__} cannot be imported by that name"


def _type_name(value: Any) -> str:
    klass = type(value)
    return klass.__qualname__ if klass.__module__ == "builtins" else _class_name(klass)


def _what(value: Any) -> str:
    """A short description of an unpicklable value."""
    if isinstance(value, types.LambdaType) and value.__name__ == "<lambda>":
        return "a lambda function"
    if isinstance(value, (types.FunctionType, types.MethodType)):
        return f"the function {value.__qualname__}"
    if isinstance(value, io.IOBase):
        return f"an open file ({_type_name(value)})"
    if isinstance(value, type):
        return f"the class {_class_name(value)}"
    if "<locals>" in type(value).__qualname__:
        return f"an instance of {_class_name(type(value))}, a class defined inside a function"
    return f"a {_type_name(value)}"
