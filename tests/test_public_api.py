"""Every public name has a docstring, and the API contract's names exist."""

from __future__ import annotations

import importlib
import inspect

import pytest

import atoll

MODULES = [
    "atoll",
    "atoll.db",
    "atoll.connection",
    "atoll.readahead",
    "atoll.serialize",
    "atoll.conflict",
    "atoll.broken",
    "atoll.classes",
    "atoll.migrate",
    "atoll.errors",
    "atoll.ids",
    "atoll.gcpause",
    "atoll.arguments",
    "atoll.unpicklable",
    "atoll.config",
    "atoll.storage",
    "atoll.storage.base",
    "atoll.storage.cache",
    "atoll.storage.memory",
    "atoll.storage.sqlite",
    "atoll.storage.sqlite_pack",
    "atoll.storage.sqlite_checkpoint",
    "atoll.storage.sqlite_open",
    "atoll.storage.sqlite_pending",
    "atoll.storage.decisions",
    "atoll.storage.sqlite_write",
    "atoll.storage.postgresql",
    "atoll.storage.postgresql_pack",
    "atoll.storage.postgresql_recovery",
    "atoll.storage.targets",
]

# The transaction package's data-manager and synchronizer protocol: documented by
# that package, implemented here under its names.
PROTOCOL_METHODS = {
    "abort", "commit", "tpc_begin", "tpc_vote", "tpc_finish", "tpc_abort", "sortKey",
    "savepoint", "newTransaction", "beforeCompletion", "afterCompletion",
}


def public_names():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        assert module.__doc__, f"module {module_name} has no docstring"
        for name in getattr(module, "__all__", []):
            yield module_name, name, getattr(module, name)


@pytest.mark.parametrize("module_name,name,obj", list(public_names()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_name_is_documented(module_name, name, obj):
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return  # constants are documented where they are defined
    assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or attr in PROTOCOL_METHODS or not inspect.isfunction(member):
                continue
            assert inspect.getdoc(member), f"{module_name}.{name}.{attr} has no docstring"


def test_contract_names_exist():
    from atoll import errors, storage

    assert callable(atoll.open) and callable(atoll.connect) and atoll.DB and atoll.__version__
    for name in (
        "POSError StorageError ConflictError ReadConflictError POSKeyError InvalidObjectReference "
        "ReadOnlyError ReadOnlyHistoryError ConnectionStateError StorageTransactionError Unsupported UndoError "
        "ForbiddenGlobal BrokenModified"
    ).split():
        assert issubclass(getattr(errors, name), errors.POSError)
    assert issubclass(errors.POSKeyError, KeyError)
    for name in ("MemoryStorage", "MinimalMemoryStorage", "SQLiteStorage", "PostgreSQLStorage"):
        assert inspect.isclass(getattr(storage, name))
    from atoll import config

    for name in ("databaseFromString", "databaseFromFile", "databaseFromURL", "storageFromString",
                 "storageFromFile", "getDbSchema"):
        assert callable(getattr(config, name))
