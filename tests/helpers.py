"""Small persistent classes the tests store (importable by name, as records need)."""

from __future__ import annotations

from persistent import Persistent


class Item(Persistent):
    """A persistent object with a value."""

    def __init__(self, value: object = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<Item {self.value!r}>"


class Counter(Persistent):
    """A counter whose concurrent increments merge instead of conflicting."""

    def __init__(self) -> None:
        self.value = 0

    def _p_resolveConflict(self, old: dict, committed: dict, new: dict) -> dict:
        merged = dict(committed)
        merged["value"] = committed["value"] + new["value"] - old["value"]
        return merged


class WithArgs(Persistent):
    """A class whose ghosts need constructor arguments (``__getnewargs__``)."""

    def __new__(cls, key: str = "") -> "WithArgs":
        self = super().__new__(cls)
        self.key = key
        return self

    def __getnewargs__(self) -> tuple:
        return (self.key,)


class Plain:
    """An ordinary (not persistent) class kept inside states; records may name it
    only where ``allowed_globals`` allows ``helpers``."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plain) and other.n == self.n


def make_plain(n: int = 0) -> Plain:
    """A function stored by reference (a global)."""
    return Plain(n)


class Key(Persistent):
    """A persistent object ordered by its value, usable as a BTree key."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def __lt__(self, other: "Key") -> bool:
        return self.value < other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)
