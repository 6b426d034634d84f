"""The ``small`` workload (bench/small.py) runs its sides and prints one line each.

Speed is never asserted; the test checks that each side commits what it says and
that the report has its figures."""

from __future__ import annotations

import sqlite3

import pytest

from bench import small


def test_a_one_object_side_commits_one_transaction_per_call(tmp_path):
    commit, close = small.one_object("atoll", "sqlite")(str(tmp_path))
    for i in range(3):
        commit(i)
    close()
    conn = sqlite3.connect(tmp_path / "one.db")
    # root creation, the object's creation, then one transaction per call
    assert conn.execute("SELECT count(*) FROM transactions").fetchone()[0] == 2 + 3
    conn.close()


def test_the_collection_side_commits_both_files_and_a_cross_reference(tmp_path):
    commit, close = small.collection("atoll", "sqlite", 5)(str(tmp_path))
    commit(1)
    close()
    for name in ("a", "b"):
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        assert conn.execute("SELECT count(*) FROM commit_pending").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM transactions").fetchone()[0] == 3
        conn.close()


def test_a_case_reports_rate_p99_and_ratio_for_each_side(capsys):
    pytest.importorskip("ZODB")
    sides = {"atoll SQLite": small.one_object("atoll", "sqlite"), "ZODB FileStorage": small.one_object("zodb", "filestorage")}
    small.run_case("sqlite-1", sides, rounds=2, txns=3)
    printed = capsys.readouterr().out
    assert "== sqlite-1: 2 rounds x 3 transactions" in printed
    assert "atoll SQLite" in printed and "p99" in printed and "atoll SQLite / this:" in printed


def test_four_processes_share_one_sqlite_file(capsys):
    small.run_case("sqlite-4p", {"atoll SQLite": small._shared("atoll", "sqlite")}, rounds=1, txns=3, processes=4)
    assert "x 4 processes" in capsys.readouterr().out
