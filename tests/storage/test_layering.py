"""Invariant 6 of :mod:`atoll.storage.base`: storages never import Connection or DB.

Importing any ``atoll.x`` runs ``atoll/__init__.py``, which imports both, so the check
reads the source instead of ``sys.modules``: it follows every import statement (at
module level, inside functions, under ``TYPE_CHECKING``) from each module of
``atoll.storage``, through every atoll module reached, and fails naming the chain
that reaches a forbidden one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import atoll

SOURCE = Path(atoll.__file__).parent
FORBIDDEN = {"atoll.connection", "atoll.db"}


def module_file(name: str) -> Path | None:
    """The source file of an atoll module (or package), None if there is none."""
    base = SOURCE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name: str) -> set[str]:
    """The atoll modules that the source of module ``name`` imports, wherever the
    import statement is. ``from atoll.x import y`` counts ``atoll.x``, and ``atoll.x.y``
    too when that is a module."""
    path = module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return {each for each in found if each.startswith("atoll") and module_file(each) is not None}


def storage_modules() -> list[str]:
    folder = SOURCE / "storage"
    return sorted(f"atoll.storage.{p.stem}" if p.stem != "__init__" else "atoll.storage" for p in folder.glob("*.py"))


def test_the_check_sees_a_forbidden_import():
    # The walk finds what the package module imports (atoll imports atoll.db):
    # without this, a walk that found nothing would pass.
    assert FORBIDDEN <= imported_modules("atoll")


@pytest.mark.parametrize("start", storage_modules())
def test_storage_modules_never_reach_connection_or_db(start):
    chains = {start: [start]}
    todo = [start]
    while todo:
        name = todo.pop()
        for each in imported_modules(name):
            if each == "atoll":
                continue  # the package's own __init__ runs with any import; it is no dependency
            if each in FORBIDDEN:
                pytest.fail(f"{' -> '.join(chains[name] + [each])}: a storage must not import Connection or DB")
            if each not in chains:
                chains[each] = chains[name] + [each]
                todo.append(each)
