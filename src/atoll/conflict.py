"""Application-level conflict resolution.

When two transactions change the same object, the storage asks a resolver (during
``tpc_vote``) whether the changes can be merged. A class opts in by defining
``_p_resolveConflict(old_state, committed_state, new_state) -> merged_state``, as
BTrees' buckets do. States are merged as plain data: persistent references inside
them stay :class:`~atoll.serialize.PersistentReference` values and are written back
unchanged.

States are read with the database's :class:`~atoll.classes.ClassPolicy`, as loads
are: a record naming a forbidden global raises ForbiddenGlobal here too, before any
of its code (or the class's ``_p_resolveConflict``) runs.
"""

from __future__ import annotations

import logging

from atoll.broken import Broken
from atoll.classes import DEFAULT_POLICY, ClassPolicy
from atoll.errors import ConflictError, ForbiddenGlobal
from atoll.serialize import dump_state, record_class, record_state

logger = logging.getLogger(__name__)


def resolve(
    oid: bytes,
    committed_serial: bytes,
    read_serial: bytes,
    committed_data: bytes,
    old_data: bytes | None,
    new_data: bytes,
    policy: ClassPolicy = DEFAULT_POLICY,
) -> bytes:
    """The :class:`~atoll.storage.base.Resolver` the connection hands to storages
    (with its database's ``policy`` bound)."""
    serials = (committed_serial, read_serial)
    try:
        klass = record_class(new_data, policy)
    except ForbiddenGlobal as exc:
        exc.oid = oid
        raise
    except Exception as exc:  # an unreadable class part cannot resolve anything
        raise ConflictError(oid=oid, serials=serials, class_name=f"<cannot read: {exc}>") from exc
    name = f"{klass.__module__}.{klass.__qualname__}"
    merge = None if issubclass(klass, Broken) else getattr(klass, "_p_resolveConflict", None)
    if merge is None or old_data is None:
        raise ConflictError(oid=oid, serials=serials, class_name=name)
    try:
        offset, new_state = record_state(new_data, policy)
        _, old_state = record_state(old_data, policy)
        _, committed_state = record_state(committed_data, policy)
    except ForbiddenGlobal as exc:
        exc.oid = oid
        raise
    try:
        merged = merge(klass.__new__(klass), old_state, committed_state, new_state)
    except ConflictError as exc:
        reason = exc.reason or (exc.message if exc.message != exc.kind else None)
        raise ConflictError(oid=oid, serials=serials, class_name=name, reason=reason) from exc
    except Exception as exc:  # the class's own code said no, in its own way
        logger.debug("conflict resolution of %s failed: %s", name, exc)
        reason = f"conflict resolution failed: {type(exc).__name__}: {exc}"
        raise ConflictError(oid=oid, serials=serials, class_name=name, reason=reason) from exc
    return new_data[:offset] + dump_state(merged)
