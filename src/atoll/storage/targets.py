"""Turning what a user passes to ``atoll.DB``/``atoll.open`` into a storage.

A target is one of:

* ``None``: a new :class:`~atoll.storage.MemoryStorage`;
* a storage object: used as is;
* a filesystem path (``str`` or ``os.PathLike``): an
  :class:`~atoll.storage.SQLiteStorage` file, the embedded default;
* a URI:

  - ``memory://``: a new :class:`~atoll.storage.MemoryStorage`;
    ``memory://?keep_history=false``: a :class:`~atoll.storage.MinimalMemoryStorage`;
  - ``sqlite:///abs/path.db?keep_history=false&read_only=true``: an SQLite file
    (the path is absolute: ``/abs/path.db``); options ``keep_history``,
    ``read_only``, ``synchronous``, ``cache_size_bytes``, ``commit_lock_timeout``
    (seconds);
  - ``postgresql://user@host/db?keep_history=false`` (or ``postgres://``): a
    :class:`~atoll.storage.PostgreSQLStorage`; options ``keep_history``,
    ``read_only``, ``schema``, ``two_phase``, ``commit_lock_timeout``, ``lock_wait``
    (seconds), ``pool_size``, ``cache_size_bytes``. These are taken out of the query; the rest of the URI
    goes to libpq as the DSN, which may carry libpq's own parameters
    (``?sslmode=require``).

An unknown scheme or option raises a one-line ValueError naming it. A string that
looks like a mistyped URI (``memory:``, ``:memory:``, ``sqlite:app.db``: a known
scheme without its ``//``, or SQLite's in-memory name) is refused rather than taken
as the name of a file to create. Storage classes
are imported only when needed, so a PostgreSQL driver is loaded only for PostgreSQL.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from atoll.storage.base import Storage

__all__ = ["open_storage", "is_uri"]

# RFC 3986 scheme followed by "://"; a Windows path such as C:\\x does not match.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def is_uri(target: str) -> bool:
    """Whether ``target`` is a URI (``scheme://...``) rather than a path."""
    return bool(_URI.match(target))


def open_storage(target: object = None) -> Storage:
    """The storage ``target`` names (see the module docstring); ValueError for an
    unknown URI scheme or option, TypeError for anything else that is not a target."""
    if target is None:
        from atoll.storage.memory import MemoryStorage

        return MemoryStorage()
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
        if isinstance(target, bytes):
            raise TypeError(f"storage target must be a str path, not bytes: {target!r}")
    if isinstance(target, str):
        if is_uri(target):
            return _open_uri(target)
        _refuse_mistyped_uri(target)
        from atoll.storage.sqlite import SQLiteStorage

        return SQLiteStorage(target)
    # Duck typing rather than isinstance(target, Storage): open_view is the method
    # only a storage has, and the check does not depend on optional attributes.
    if callable(getattr(target, "open_view", None)):
        return target  # type: ignore[return-value]
    raise TypeError(
        "storage target must be None, a storage, a path or a URI, "
        f"not {type(target).__name__}: {target!r}"
    )


# A scheme and a colon, without the "//" (a one-letter scheme is a Windows drive).
_ALMOST_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def _refuse_mistyped_uri(target: str) -> None:
    """ValueError for a path that is most likely a mistyped URI (see the docstring)."""
    if target.strip().lower() in (":memory:", "memory", "memory:"):
        raise ValueError(
            f"storage target {target!r} is not a file atoll creates: for an in-memory database "
            "use 'memory://' (or None); for a file named so, write './' before it"
        )
    match = _ALMOST_URI.match(target)
    if match is None:
        return
    scheme = match.group(1).lower()
    if scheme in _OPENERS or scheme == "file":
        rest = target[match.end() :].lstrip("/")
        example = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{os.path.abspath(rest or 'app.db').lstrip('/')}",
            "file": f"sqlite:///{os.path.abspath(rest or 'app.db').lstrip('/')}",
        }.get(scheme, f"{scheme}://user@host/dbname")
        raise ValueError(
            f"storage target {target!r} looks like a mistyped URI (a URI starts with '{scheme}://'): "
            f"write {example!r}, or './{target}' for a file of that name"
        )


def _redact(uri: str) -> str:
    """``uri`` with any password replaced, for error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _open_uri(uri: str) -> Storage:
    try:
        return _open_known_uri(uri)
    except ValueError as e:
        # Messages quote the URI; never repeat a password in them.
        if _redact(uri) != uri:
            raise ValueError(str(e).replace(uri, _redact(uri))) from None
        raise


def _open_known_uri(uri: str) -> Storage:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    opener = _OPENERS.get(scheme)
    if opener is None:
        known = ", ".join(f"{name}://" for name in _OPENERS)
        raise ValueError(f"unknown storage URI scheme {scheme!r} in {uri!r}; use one of {known}")
    return opener(uri)


def _boolean(uri: str, name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"storage URI option {name}={value!r} is not true or false in {uri!r}")


def _seconds(uri: str, name: str, value: str) -> float:
    from atoll.storage.options import MAX_WAIT, check_wait

    try:
        return check_wait(name, float(value), allow_zero=name != "lock_wait")
    except ValueError:
        low = "more than 0" if name == "lock_wait" else "0"
        raise ValueError(
            f"storage URI option {name}={value!r} is not a number of seconds from {low} to "
            f"{MAX_WAIT:g} (one day) in {uri!r}"
        ) from None


def _count(uri: str, name: str, value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"storage URI option {name}={value!r} is not an integer >= 0 in {uri!r}")
    return int(value)


def _text(uri: str, name: str, value: str) -> str:
    return value


def _synchronous(uri: str, name: str, value: str) -> str:
    if value.lower() not in ("full", "normal"):
        raise ValueError(f"storage URI option {name}={value!r} is not full or normal in {uri!r}")
    return value.lower()


def _options(uri: str, query: str, known: dict[str, Callable[[str, str, str], Any]]) -> dict:
    """The query's options, converted; ValueError naming an unknown or repeated one."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise ValueError(
                f"unknown storage URI option {name!r} in {uri!r} (allowed: {allowed})"
            )
        if name in options:
            raise ValueError(f"storage URI option {name!r} given twice in {uri!r}")
        options[name] = known[name](uri, name, value)
    return options


def _open_memory(uri: str) -> Storage:
    parts = urlsplit(uri)
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"a memory URI names no host or path: use 'memory://', not {uri!r}")
    options = _options(uri, parts.query, {"keep_history": _boolean})
    from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage

    return MemoryStorage() if options.get("keep_history", True) else MinimalMemoryStorage()


def _open_sqlite(uri: str) -> Storage:
    parts = urlsplit(uri)
    if parts.netloc:
        raise ValueError(
            f"an SQLite URI has no host: write sqlite:///absolute/path.db, not {uri!r}"
        )
    path = unquote(parts.path)
    if path in ("", "/"):
        raise ValueError(f"an SQLite URI needs a file path: sqlite:///absolute/path.db, not {uri!r}")
    options = _options(uri, parts.query, _SQLITE_OPTIONS)
    from atoll.storage.sqlite import SQLiteStorage

    return SQLiteStorage(path, **options)


# The options of SQLite URIs: SQLiteStorage's keyword arguments.
_SQLITE_OPTIONS: dict[str, Callable[[str, str, str], Any]] = {
    "keep_history": _boolean,
    "read_only": _boolean,
    "synchronous": _synchronous,
    "cache_size_bytes": _count,
    "commit_lock_timeout": _seconds,
}

# The options of PostgreSQL URIs that are atoll's (PostgreSQLStorage's keyword
# arguments); any other goes to libpq.
_POSTGRESQL_OPTIONS: dict[str, Callable[[str, str, str], Any]] = {
    "keep_history": _boolean,
    "read_only": _boolean,
    "schema": _text,
    "two_phase": _boolean,
    "commit_lock_timeout": _seconds,
    "lock_wait": _seconds,
    "pool_size": _count,
    "cache_size_bytes": _count,
}


def _open_postgresql(uri: str) -> Storage:
    parts = urlsplit(uri)
    options: dict[str, Any] = {}
    libpq: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _POSTGRESQL_OPTIONS:
            if name in options:
                raise ValueError(f"storage URI option {name!r} given twice in {uri!r}")
            options[name] = _POSTGRESQL_OPTIONS[name](uri, name, value)
        else:
            libpq.append((name, value))
    dsn = urlunsplit(parts._replace(query=urlencode(libpq)))
    _check_libpq(uri, dsn)
    from atoll.storage.postgresql import PostgreSQLStorage

    return PostgreSQLStorage(dsn, **options)


def _check_libpq(uri: str, dsn: str) -> None:
    """Have libpq parse the DSN now, so an unknown parameter is reported as a bad
    URI (naming it) before any connection is tried."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as e:
        detail = " ".join(str(e).split())  # libpq's message, on one line
        raise ValueError(f"bad PostgreSQL URI {uri!r}: {detail}") from None


_OPENERS: dict[str, Callable[[str], Storage]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "postgresql": _open_postgresql,
    "postgres": _open_postgresql,
}
