"""Classes that move or vanish: broken objects, class aliases, classFactory, and the
rewrite tool (atoll.migrate.rename_classes)."""

from __future__ import annotations

import importlib
import logging
import sys
import uuid
from pathlib import Path

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import atoll
from atoll.broken import Broken, PersistentBroken, broken_class, persistent_broken_class
from atoll.config import databaseFromString
from atoll.errors import BrokenModified, ForbiddenGlobal
from atoll.ids import oid_repr
from atoll.migrate import rename_classes, rename_in_record

MODULE_SOURCE = '''
from persistent import Persistent

class Page(Persistent):
    def __init__(self, title, link=None):
        self.title = title
        self.link = link

    def shout(self):
        return self.title.upper()

class Tag(Persistent):
    def __init__(self, name):
        self.name = name
'''


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A package of application classes on sys.path; ``app.remove(module)`` makes a
    module vanish, ``app.write(module)`` (re)creates one."""
    package = f"wiki_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "code"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))

    class App:
        name = package

        def write(self, module: str) -> object:
            (root / package / f"{module}.py").write_text(MODULE_SOURCE)
            importlib.invalidate_caches()
            return importlib.import_module(f"{package}.{module}")

        def remove(self, module: str) -> None:
            (root / package / f"{module}.py").unlink()
            sys.modules.pop(f"{package}.{module}", None)
            importlib.invalidate_caches()

    yield App()
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def _fill(path: Path, models) -> tuple[bytes, bytes]:
    """Pages in an OOBTree (enough for several buckets) and in a mapping; oids of
    the first page and the tree."""
    db = atoll.DB(path)
    with db.transaction() as conn:
        tree = conn.root()["pages"] = OOBTree()
        for i in range(100):
            tree[f"page{i:03}"] = models.Page(f"Page {i}")
        conn.root()["front"] = PersistentMapping(first=tree["page000"], tag=models.Tag("news"))
    oids = tree["page000"]._p_oid, tree._p_oid
    db.close()
    return oids


def test_missing_classes_load_as_broken_objects_and_containers_stay_readable(app, tmp_path, caplog):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    first, _ = _fill(path, models)
    app.remove("models")
    db = atoll.DB(path)
    caplog.set_level(logging.WARNING, logger="atoll.broken")
    with db.transaction() as conn:
        tree = conn.root()["pages"]
        assert len(tree) == 100 and list(tree.keys())[:2] == ["page000", "page001"]
        page = tree["page042"]
        assert isinstance(page, Broken) and isinstance(page, PersistentBroken)
        assert type(page).__name__ == "Page"
        assert page.__Broken_state__ == {"title": "Page 42", "link": None}
        assert f"broken {app.name}.models.Page object" in repr(page)
        assert conn.root()["front"]["first"]._p_oid == first
        assert conn.root()["front"]["tag"].__Broken_state__ == {"name": "news"}
        with pytest.raises(BrokenModified, match=f"cannot change broken {app.name}.models.Page object"):
            page.title = "changed"
        # A container that refers to broken objects can still be changed.
        tree["new"] = PersistentMapping(x=1)
        tree["alias"] = page
    # One log line per missing class, not per object.
    lines = [r.getMessage() for r in caplog.records if "cannot be found" in r.getMessage()]
    assert sorted(line.split()[1] for line in lines) == [f"{app.name}.models.Page", f"{app.name}.models.Tag"]
    with db.transaction() as conn:
        assert conn.root()["pages"]["alias"].__Broken_state__["title"] == "Page 42"
        assert conn.root()["pages"]["new"]["x"] == 1
    db.close()


def test_a_broken_object_is_never_written(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    db = atoll.DB(path)
    conn = db.open()
    page = conn.root()["pages"]["page001"]
    page._p_activate()
    page._p_changed = True
    with pytest.raises(BrokenModified, match=rf"cannot store broken {app.name}\.models\.Page object {oid_repr(page._p_oid)}"):
        transaction.commit()
    transaction.abort()
    conn.close()
    db.close()


def test_a_broken_class_itself_is_never_written():
    # A state that refers to the stand-in class (not to an instance of it): the
    # class names nothing that exists, so writing it would lose the real name.
    gone = broken_class("gone.module", "Thing", "no module named 'gone'")
    conn_db = atoll.DB()
    conn = conn_db.open()
    for klass in (gone, persistent_broken_class(gone)):
        conn.root()["kind"] = klass
        with pytest.raises(BrokenModified, match=r"cannot store broken class gone\.module\.Thing: .*no module named 'gone'"):
            transaction.commit()
        transaction.abort()
    conn.close()
    conn_db.close()


def test_aliases_restore_the_real_class_for_module_and_class_moves(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    core = app.write("core")
    for i, aliases in enumerate((
        {f"{app.name}.models": f"{app.name}.core"},
        {f"{app.name}.models.Page": f"{app.name}.core.Page", f"{app.name}.models.Tag": f"{app.name}.core.Tag"},
    )):
        db = atoll.DB(path, class_aliases=aliases)
        with db.transaction() as conn:
            page = conn.root()["pages"][f"page00{i}"]
            assert type(page) is core.Page and page.shout() == f"PAGE {i}"
            assert type(conn.root()["front"]["tag"]) is core.Tag
            page.title = "changed"  # and it can be written again
        with db.transaction() as conn:
            assert conn.root()["pages"][f"page00{i}"].title == "changed"
        db.close()


def test_an_alias_target_module_is_imported_on_demand(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    app.write("core")
    sys.modules.pop(f"{app.name}.core")  # not imported: the alias names it, so it may be
    db = atoll.DB(path, class_aliases={f"{app.name}.models": f"{app.name}.core"})
    with db.transaction() as conn:
        assert conn.root()["pages"]["page000"].shout() == "PAGE 0"
    db.close()


def test_class_aliases_and_allowed_globals_from_a_config_file(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    core = app.write("core")
    db = databaseFromString(
        f"""
        <zodb>
          <sqlitestorage>
            path {path}
          </sqlitestorage>
          class-alias {app.name}.models {app.name}.core
          allowed-globals helpers decimal.Context
        </zodb>
        """
    )
    assert db.class_policy.allowed_globals == ("helpers", "decimal.Context")
    with db.transaction() as conn:
        assert type(conn.root()["pages"]["page003"]) is core.Page
    db.close()


def test_class_factory_can_be_overridden(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    core = app.write("core")
    asked = []

    class RenamingDB(atoll.DB):
        def classFactory(self, connection, modulename, globalname):
            asked.append((modulename, globalname))
            if modulename == f"{app.name}.models":
                return getattr(core, globalname)
            return super().classFactory(connection, modulename, globalname)

    db = RenamingDB(path)
    with db.transaction() as conn:
        assert type(conn.root()["pages"]["page009"]) is core.Page
        assert (f"{app.name}.models", "Page") in asked
    db.close()
    # On the instance, as ZODB code does; what it returns is still checked.
    db = atoll.DB(path)
    default = db.classFactory
    db.classFactory = lambda c, module, name: __import__("os").system if module.startswith(app.name) else default(c, module, name)
    with db.transaction() as conn:
        with pytest.raises(ForbiddenGlobal, match=rf"forbidden global {app.name}\.models\.Page"):
            conn.root()["pages"]["page009"]._p_activate()
    db.close()


def test_rename_classes_rewrites_records_so_aliases_are_no_longer_needed(app, tmp_path):
    models = app.write("models")
    path = tmp_path / "wiki.db"
    _fill(path, models)
    app.remove("models")
    core = app.write("core")
    db = atoll.DB(path)
    lines = []
    stats = rename_classes(db, {f"{app.name}.models": f"{app.name}.core"}, progress=lines.append)
    assert stats.read >= 103 and stats.rewritten == stats.read - 2  # all but the root and the tree itself
    assert stats.names[f"{app.name}.models.Page -> {app.name}.core.Page"] >= 100
    assert lines and lines[-1].endswith("done")
    db.close()
    db = atoll.DB(path)  # no aliases any more
    with db.transaction() as conn:
        assert type(conn.root()["pages"]["page050"]) is core.Page
        assert type(conn.root()["front"]["tag"]) is core.Tag
        assert conn.root()["front"]["first"].title == "Page 0"
    # A second run finds nothing left to do.
    assert rename_classes(db, {f"{app.name}.models": f"{app.name}.core"}).rewritten == 0
    db.close()


def test_rename_across_a_collection_where_the_class_is_referenced_across_databases(app, tmp_path):
    models = app.write("models")
    config = f"""
        <zodb main>
          <sqlitestorage>
            path {tmp_path / 'main.db'}
          </sqlitestorage>
        </zodb>
        <zodb catalog>
          <sqlitestorage>
            path {tmp_path / 'catalog.db'}
          </sqlitestorage>
        </zodb>
    """
    db = databaseFromString(config)
    with db.transaction() as conn:
        catalog = conn.get_connection("catalog")
        pages = catalog.root()["pages"] = OOBTree()
        for i in range(20):
            page = models.Page(f"Page {i}")
            catalog.add(page)
            pages[i] = page
        # main refers to pages living in catalog, and a page in main links to one in catalog
        conn.root()["index"] = PersistentMapping(first=pages[0])
        conn.root()["local"] = models.Page("local", link=pages[1])
    for other in list(db.databases.values()):
        other.close()
    app.remove("models")
    core = app.write("core")

    db = databaseFromString(config)  # broken, but readable across databases
    with db.transaction() as conn:
        first = conn.root()["index"]["first"]
        assert isinstance(first, Broken) and first._p_jar.db().database_name == "catalog"
        assert conn.get_connection("catalog").root()["pages"][5].__Broken_state__["title"] == "Page 5"
        # Changing the container in main that refers to a broken object of catalog works.
        conn.root()["index"]["second"] = conn.get_connection("catalog").root()["pages"][2]
    with db.transaction() as conn:
        conn.get_connection("catalog")  # (the index, cached in main, holds catalog's ghost)
        assert conn.root()["index"]["second"].__Broken_state__["title"] == "Page 2"
    stats = rename_classes(db.databases, {f"{app.name}.models.Page": f"{app.name}.core.Page"})
    assert stats.per_database["catalog"][1] >= 20 and stats.per_database["main"][1] >= 2
    for other in list(db.databases.values()):
        other.close()

    db = databaseFromString(config)
    with db.transaction() as conn:
        assert type(conn.root()["index"]["first"]) is core.Page
        assert conn.root()["index"]["second"].shout() == "PAGE 2"
        assert conn.root()["local"].link.title == "Page 1"
        assert type(conn.root()["local"]) is core.Page
    for other in list(db.databases.values()):
        other.close()


def test_rename_in_record_rewrites_globals_at_the_byte_level():
    import pickle

    from helpers import Item

    data = pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": {"x": Item}}, 3)
    rename = lambda module, name: ("helpers2", name) if module == "helpers" else (module, name)  # noqa: E731
    new = rename_in_record(data, rename)
    assert new == data.replace(b"chelpers\nItem\n", b"chelpers2\nItem\n")
    assert rename_in_record(data, lambda module, name: (module, name)) is None
    # Protocol 4: STACK_GLOBAL strings rewritten, frames dropped.
    data4 = pickle.dumps(PersistentMapping, 4) + pickle.dumps({"x": Item, "y": 1}, 4)
    new4 = rename_in_record(data4, rename)
    assert b"helpers2" in new4 and b"\x95" not in new4
    unpickler_names = []

    class Spy(pickle.Unpickler):
        def find_class(self, module, name):
            unpickler_names.append((module, name))
            return object

    import io

    stream = io.BytesIO(new4)
    spy = Spy(stream)
    spy.load()
    assert spy.load() == {"x": object, "y": 1}
    assert ("helpers2", "Item") in unpickler_names


def test_rename_classes_refuses_empty_or_bad_aliases():
    db = atoll.DB()
    with pytest.raises(ValueError):
        rename_classes(db, {})
    with pytest.raises(ValueError):
        rename_classes(db, {"old.Name": ""})
    db.close()
