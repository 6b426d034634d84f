"""The operating commands, through click's runner."""

from __future__ import annotations

import atoll


def test_backup_writes_a_file_that_opens(run, sqlite_target, tmp_path):
    copy = str(tmp_path / "copy.db")
    result = run("backup", sqlite_target, copy)
    assert f"main: {copy}" in result.stdout
    db = atoll.open(copy)
    try:
        with db.transaction() as conn:
            assert conn.root()["people"]["ada"]["born"] == 1816
    finally:
        db.close()
    again = run("backup", sqlite_target, copy, expect=1)
    assert "exists: give a new file name" in again.stderr


def test_backup_of_a_collection_writes_a_folder_with_a_config(run, collection_target, tmp_path):
    out = run.json("backup", collection_target, str(tmp_path / "bk"))
    assert set(out["files"]) == {"users", "orders"}
    rows = run.json("info", out["config"])
    assert {r["database"] for r in rows} == {"users", "orders"}


def test_backup_of_postgresql_says_to_use_pg_dump(run, postgres_target, tmp_path):
    result = run("backup", postgres_target, str(tmp_path / "x.db"), expect=1)
    assert "pg_dump --schema=" in result.stderr and result.stderr.count("\n") == 1
