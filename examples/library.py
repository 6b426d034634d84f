"""The classes the quickstart stores.

Records name the class of each object by module and name, so persistent classes
live in an importable module, not in the script that runs (``__main__``): any
program that imports ``library`` can then read the books back.
"""

from __future__ import annotations

from persistent import Persistent


class Book(Persistent):
    """An ordinary Python class; subclassing Persistent is all it takes."""

    def __init__(self, title: str, author: str) -> None:
        self.title = title
        self.author = author
        self.loans = 0
