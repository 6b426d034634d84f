"""The reading commands (info, ls, show, log, history) on every kind of target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TARGETS = ["sqlite_target", "postgres_target"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param)


def test_info_describes_the_database(run, target):
    (row,) = run.json("info", target)
    assert row["database"] == "main"
    assert row["objects"] == 3  # root, people, ada
    assert row["transactions"] == 3  # creation, add ada, fix ada
    assert row["keeps_history"] is True
    assert row["first_commit"] <= row["last_commit"]
    assert row["collection"] == []
    text = run("info", target).stdout
    assert "objects       3" in text and "history       kept" in text


def test_ls_lists_the_root_and_objects_by_path(run, target):
    root = run.json("ls", target)
    keys = {e["key"]: e for e in root["entries"]}
    assert keys["people"]["class"] == "BTrees.OOBTree.OOBTree" and keys["people"]["oid"].startswith("0x")
    assert keys["count"]["value"] == "3"
    ada = run.json("ls", target, "people/ada")
    assert {e["key"]: e["value"] for e in ada["entries"]} == {"born": "1816", "name": "'Ada'"}
    assert "ada" in run("ls", target, "people").stdout


def test_show_gives_class_state_size_and_revisions(run, target):
    shown = run.json("show", target, "people/ada")
    assert shown["class"] == "persistent.mapping.PersistentMapping"
    assert shown["state"] == {"data": {"born": 1816, "name": "Ada"}}
    assert shown["revisions"] == 2
    assert shown["size"] > 0
    root = run.json("show", target, "0x0")
    (people,) = root["references"]
    assert people == {"$ref": run.json("ls", target)["entries"][0]["oid"], "class": "BTrees.OOBTree.OOBTree"}


def test_log_lists_newest_transactions_first(run, target):
    rows = run.json("log", target, "-n", "2")
    assert [r["description"] for r in rows] == ["fix ada", "add ada"]
    assert rows[1]["user"].endswith("tester")
    assert rows[0]["databases"] == ["main"]


def test_history_lists_revisions_of_one_object(run, target):
    shown = run.json("history", target, "people/ada")
    assert [r["description"] for r in shown["revisions"]] == ["fix ada", "add ada"]
    assert "fix ada" in run("history", target, "people/ada").stdout


def test_reading_commands_never_write(run, sqlite_target):
    before = Path(sqlite_target).read_bytes()
    mtime = os.stat(sqlite_target).st_mtime_ns
    for args in (["info"], ["ls"], ["show"], ["log"], ["ls", "--json"]):
        run(args[0], sqlite_target, *args[1:])
    assert os.stat(sqlite_target).st_mtime_ns == mtime
    assert Path(sqlite_target).read_bytes() == before


def test_a_collection_config_covers_every_database(run, collection_target):
    rows = {r["database"]: r for r in run.json("info", collection_target)}
    assert set(rows) == {"users", "orders"}
    assert rows["users"]["collection"] == ["orders"]
    first = run.json("ls", collection_target, "-d", "orders", "first")
    (customer,) = first["entries"]
    assert customer["database"] == "users"
    shown = run.json("show", collection_target, "-d", "orders", "first")
    assert shown["state"]["data"]["customer"]["$ref"].startswith("users:0x")
    log = run.json("log", collection_target, "-n", "1")
    assert log[0]["description"] == "first order"
    named = run.json("show", collection_target, f"users:{customer['oid']}")
    assert named["state"] == {"data": {"name": "Ada"}}


def test_a_memory_config_works(run, memory_config):
    """A memory storage starts empty at every open: each command sees a new root."""
    rows = run.json("info", memory_config)
    assert [r["database"] for r in rows] == ["main", "other"]
    assert all(r["objects"] == 1 and r["transactions"] == 1 for r in rows)
    assert run.json("ls", memory_config)["entries"] == []
    assert run.json("show", memory_config, "-d", "other")["class"] == "persistent.mapping.PersistentMapping"
    (created,) = run.json("log", memory_config, "-n", "1")
    assert created["description"] == "initial database creation"
    assert run.json("history", memory_config, "0x0")["revisions"][0]["description"] == "initial database creation"


def test_show_reads_records_of_classes_that_are_not_installed(run, tmp_path):
    import atoll
    from atoll.ids import ROOT_OID
    from atoll.serialize import make_record
    from atoll.storage.base import TransactionMeta
    import pickle

    path = str(tmp_path / "alien.db")
    db = atoll.open(path)
    view = db.storage.open_view()
    root_data, serial = view.load(ROOT_OID)
    oid = db.storage.new_oid()
    alien = b"\x80\x03cnowhere.app\nThing\nq\x00." + pickle.dumps({"x": 1}, 3)
    view.tpc_begin(TransactionMeta(description="alien"))
    view.store(oid, b"\0" * 8, alien)
    view.tpc_vote()
    view.tpc_finish()
    view.release()
    db.close()
    shown = run.json("show", path, "0x" + oid.hex())
    assert shown["class"] == "nowhere.app.Thing" and shown["state"] == {"x": 1}
    _ = make_record  # the root record format is the one make_record writes


def test_hostile_records_are_shown_not_run(run, tmp_path):
    import atoll
    import pickle
    from atoll.storage.base import TransactionMeta

    sentinel = tmp_path / "pwned"
    path = str(tmp_path / "hostile.db")
    db = atoll.open(path)
    view = db.storage.open_view()
    oid = db.storage.new_oid()
    payload = (
        b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00."
        + b"\x80\x03cos\nsystem\nX" + len(f"touch {sentinel}").to_bytes(4, "little") + f"touch {sentinel}".encode()
        + b"\x85R."
    )
    view.tpc_begin(TransactionMeta())
    view.store(oid, b"\0" * 8, payload)
    view.tpc_vote()
    view.tpc_finish()
    view.release()
    db.close()
    shown = run.json("show", path, "0x" + oid.hex())
    assert shown["state"]["$class"] == "os.system"
    assert not sentinel.exists()
    _ = pickle


def test_errors_are_one_line_with_exit_status(run, sqlite_target, tmp_path):
    missing = run("info", str(tmp_path / "missing.db"), expect=2)
    assert missing.stderr.strip().count("\n") == 0 and "no database at" in missing.stderr
    assert not (tmp_path / "missing.db").exists()
    bad_scheme = run("info", "foo://x", expect=2)
    assert "unknown storage URI scheme 'foo'" in bad_scheme.stderr
    no_object = run("show", sqlite_target, "0x99", expect=1)
    assert no_object.stderr.strip() == "atoll: error: no object 0x0000000000000099 in database 'main'"
    no_path = run("ls", sqlite_target, "people/bob", expect=1)
    assert "no 'bob' in people" in no_path.stderr
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    result = run("info", str(not_db), expect=1)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    unreachable = run("info", "postgresql://nobody@127.0.0.1:1/x", expect=1)
    assert unreachable.stderr.startswith("atoll: error: ") and unreachable.stderr.count("\n") == 1
    run("log", sqlite_target, "-n", "x", expect=2)


def test_debug_shows_the_traceback(sqlite_target, tmp_path):
    from click.testing import CliRunner

    from atoll.cli.main import cli

    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    result = CliRunner().invoke(cli, ["--debug", "info", str(not_db)])
    assert result.exit_code == 1 and result.exception is not None
