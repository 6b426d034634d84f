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


def test_undo_by_the_id_log_shows(run, sqlite_target):
    newest = run.json("log", sqlite_target, "-n", "1")[0]
    assert newest["description"] == "fix ada"
    out = run("undo", sqlite_target, newest["id"])
    assert "undone 1 transaction" in out.stdout
    assert run.json("show", sqlite_target, "people/ada")["state"]["data"]["born"] == 1815
    log = run.json("log", sqlite_target, "-n", "1")
    assert log[0]["description"].startswith("undo ") and log[0]["user"].endswith("atoll undo")


def test_undo_refused_after_a_later_change_changes_nothing(run, sqlite_target):
    add = run.json("log", sqlite_target, "-n", "2")[1]  # "add ada": ada changed since
    before = run.json("log", sqlite_target)
    result = run("undo", sqlite_target, add["id"], expect=1)
    assert "UndoError" in result.stderr and result.stderr.count("\n") == 1
    assert run.json("log", sqlite_target) == before


def test_undo_of_a_collection_transaction_undoes_every_database(run, collection_target):
    (first,) = run.json("log", collection_target, "-n", "1")
    assert sorted(first["databases"]) == ["orders", "users"]
    run("undo", collection_target, first["id"])
    assert run.json("ls", collection_target, "-d", "orders")["entries"] == []
    assert run.json("ls", collection_target, "-d", "users")["entries"] == []


def test_undo_of_a_bad_id_is_one_line(run, sqlite_target):
    result = run("undo", sqlite_target, "nonsense", expect=1)
    assert "is not an undo id" in result.stderr and result.stderr.count("\n") == 1


def test_copy_makes_an_equal_database_and_continues_an_interrupted_one(run, sqlite_target, tmp_path):
    copy = str(tmp_path / "copy.db")
    out = run.json("copy", sqlite_target, copy)
    assert out["main"]["transactions"] == 3 and out["main"]["resumed_after"] is None
    assert run.json("log", copy) == [dict(r, id=r["id"]) for r in run.json("log", sqlite_target)]
    again = run.json("copy", sqlite_target, copy)  # nothing left to copy
    assert again["main"]["transactions"] == 0 and again["main"]["resumed_after"] is not None


def test_copy_to_and_from_a_zodb_filestorage(run, sqlite_target, tmp_path):
    fs, back = str(tmp_path / "Data.fs"), str(tmp_path / "back.db")
    run("copy", sqlite_target, fs)
    run("copy", fs, back)
    assert run.json("show", back, "people/ada")["state"] == {"data": {"born": 1816, "name": "Ada"}}


def test_copy_into_a_database_that_is_not_empty_is_refused(run, sqlite_target, tmp_path):
    other = str(tmp_path / "other.db")
    atoll.open(other).close()  # a database of its own: its root's creation
    result = run("copy", sqlite_target, other, expect=2)
    assert "is not empty and is not an interrupted copy" in result.stderr and result.stderr.count("\n") == 1
    missing = run("copy", str(tmp_path / "missing.db"), str(tmp_path / "x.db"), expect=2)
    assert "no database at" in missing.stderr
def test_rename_classes_rewrites_records_without_the_application(run, tmp_path):
    import pickle

    from atoll.storage.base import TransactionMeta

    path = str(tmp_path / "old.db")
    db = atoll.open(path)
    view = db.storage.open_view()
    oid = db.storage.new_oid()
    old_record = b"\x80\x03cteamwiki.models\nPage\nq\x00." + pickle.dumps({"title": "Home"}, 3)
    view.tpc_begin(TransactionMeta(description="an old page"))
    view.store(oid, b"\0" * 8, old_record)
    view.tpc_vote()
    view.tpc_finish()
    view.release()
    with db.transaction() as conn:
        conn.root()["home"] = conn.get(oid)
    db.close()
    assert run.json("show", path, "0x" + oid.hex())["class"] == "teamwiki.models.Page"
    out = run.json("rename-classes", path, "teamwiki.models=teamwiki.core")
    assert out["rewritten"] >= 1 and out["names"]
    assert run.json("show", path, "0x" + oid.hex())["class"] == "teamwiki.core.Page"
    assert run.json("show", path, "0x" + oid.hex())["state"] == {"title": "Home"}


def test_rename_classes_needs_old_equals_new(run, sqlite_target):
    result = run("rename-classes", sqlite_target, "nonsense", expect=2)
    assert "is not OLD=NEW" in result.stderr


def test_pack_removes_garbage_across_the_collection(run, collection_target):
    import transaction

    db = atoll.open(collection_target)
    conn = db.open()
    orders = conn.get_connection("orders")
    del orders.root()["first"]  # ada is now referred to only from users' root
    orders.root()["junk"] = {"x": 1}
    conn.root()["tmp"] = __import__("persistent.mapping").mapping.PersistentMapping()
    transaction.commit()
    del conn.root()["tmp"]
    transaction.commit()
    conn.close()
    for each in list(db.databases.values()):
        each.close()
    out = run.json("pack", collection_target)
    assert set(out) == {"users", "orders"}
    assert out["users"]["objects_removed"] == 1  # tmp, reachable from nothing
    assert out["orders"]["objects_removed"] == 1  # the old order
    assert run.json("ls", collection_target)["entries"][0]["key"] == "ada"
    assert run.json("check", collection_target)["ok"] is True


def test_check_finds_a_dangling_reference_and_exits_1(run, collection_target):
    from atoll.storage import SQLiteStorage

    db = atoll.open(collection_target)
    users_path = db.databases["users"].storage.path
    conn = db.open()
    ada_oid = conn.root()["ada"]._p_oid
    conn.close()
    for each in list(db.databases.values()):
        each.close()
    storage = SQLiteStorage(users_path)
    view = storage.open_view()
    from atoll.storage.base import DELETED, TransactionMeta

    serial = view.load(ada_oid)[1]
    view.tpc_begin(TransactionMeta(description="damage"))
    view.store(ada_oid, serial, DELETED)  # users' ada ends; orders still refers to it
    view.tpc_vote()
    view.tpc_finish()
    view.close()
    storage.close()
    result = run("check", collection_target, "--json", expect=1)
    import json

    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {p["kind"] for p in report["problems"]} >= {"dangling"}
    text = run("check", collection_target, expect=1).stdout
    assert "problem" in text and "found" in text


def test_vacuum_reports_sizes(run, sqlite_target):
    out = run.json("vacuum", sqlite_target)
    assert 0 < out["main"]["after"] <= out["main"]["before"]
    assert "main:" in run("vacuum", sqlite_target).stdout


def test_export_and_import_a_subtree_twice(run, sqlite_target, tmp_path):
    path = str(tmp_path / "people.atollx")
    out = run.json("export", sqlite_target, "people", path)
    assert out["records"] >= 2 and out["leaving"] == [] and out["root"].startswith("main:0x")
    other = str(tmp_path / "other.db")
    atoll.open(other).close()
    first = run.json("import", other, path, "--key", "people")
    assert first["records"] == out["records"] and first["key"] == "people"
    run("import", other, path, "--key", "again")
    assert run.json("show", other, "people/ada")["state"]["data"]["born"] == 1816
    assert run.json("show", other, "again/ada")["oid"] != run.json("show", other, "people/ada")["oid"]
    taken = run("import", other, path, "--key", "people", expect=1)
    assert "already has a key 'people'" in taken.stderr and taken.stderr.count("\n") == 1


def test_import_of_a_file_that_is_not_an_export_is_one_line_and_writes_nothing(run, sqlite_target, tmp_path):
    before = run.json("log", sqlite_target)
    result = run("import", sqlite_target, sqlite_target, "--key", "x", expect=1)
    assert "is not an atoll export file" in result.stderr and result.stderr.count("\n") == 1
    assert run.json("log", sqlite_target) == before


def test_export_of_a_collection_follows_into_the_other_database(run, collection_target, tmp_path):
    path = str(tmp_path / "first.atollx")
    out = run.json("export", collection_target, "first", path, "--database", "orders")
    assert out["databases"] == {"orders": 1, "users": 1} and out["leaving"] == []
    run("import", collection_target, path, "--key", "copy", "--database", "orders")
    db = atoll.open(collection_target)
    try:
        with db.transaction() as conn:
            orders = conn.get_connection("orders").root()
            customer = orders["copy"]["customer"]
            assert customer["name"] == "Ada" and customer._p_jar is conn  # a new Ada, in users
            assert customer is not conn.root()["ada"] and "copy" not in conn.root()
    finally:
        for each in list(db.databases.values()):
            each.close()


def test_a_reference_leaving_the_export_is_listed_and_refused_unless_kept(run, collection_target, tmp_path):
    orders_alone = str(tmp_path / "orders.db")  # opened alone: users is not there to follow
    path = str(tmp_path / "first.atollx")
    out = run("export", orders_alone, "first", path)
    assert "1 references leave the set" in out.stdout and "-> users:0x" in out.stdout
    refused = run("import", collection_target, path, "--key", "copy", "--database", "orders", expect=1)
    assert "outside the exported set" in refused.stderr and refused.stderr.count("\n") == 1
    run("import", collection_target, path, "--key", "copy", "--database", "orders", "--keep-leaving")
    db = atoll.open(collection_target)
    try:
        with db.transaction() as conn:
            orders = conn.get_connection("orders").root()
            assert orders["copy"]["customer"] is conn.root()["ada"] and orders["copy"] is not orders["first"]
    finally:
        for each in list(db.databases.values()):
            each.close()
