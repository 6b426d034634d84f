"""atoll in one screen: store objects in an SQLite file, read them back.

Run it twice: the second run finds what the first one stored.
"""

from __future__ import annotations

import sys

import transaction
from BTrees.OOBTree import OOBTree

import atoll
from library import Book  # persistent classes live in an importable module


def main(path: str = "quickstart.db") -> None:
    db = atoll.open(path)  # an SQLite file, created on first use
    with db.transaction() as conn:  # commits when the block ends
        root = conn.root()
        if "books" not in root:
            root["books"] = OOBTree()
            for title, author in [
                ("Dune", "Frank Herbert"),
                ("Neuromancer", "William Gibson"),
                ("The Dispossessed", "Ursula K. Le Guin"),
            ]:
                root["books"][title] = Book(title, author)
        root["runs"] = root.get("runs", 0) + 1
        root["books"]["Dune"].loans += 1

    conn = db.open()
    root = conn.root()
    print(f"{path}: this example has run {root['runs']} time(s)")
    for title, book in root["books"].items():
        print(f"  {title} by {book.author}, lent {book.loans} time(s)")
    print(f"{len(db)} objects, last transaction {db.lastTransaction().hex()}")
    transaction.abort()
    conn.close()
    db.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
