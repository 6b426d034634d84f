"""atoll.storage.targets: what DB()/atoll.open() accept as a storage target."""

from __future__ import annotations

import pathlib

import pytest

from atoll.storage.memory import MemoryStorage, MinimalMemoryStorage
from atoll.storage.sqlite import SQLiteStorage
from atoll.storage.targets import is_uri, open_storage


def test_none_is_a_new_memory_storage():
    first, second = open_storage(None), open_storage()
    assert type(first) is MemoryStorage
    assert first is not second


def test_a_storage_object_is_used_as_is():
    storage = MinimalMemoryStorage()
    assert open_storage(storage) is storage


@pytest.mark.parametrize(
    "uri, cls",
    [
        ("memory://", MemoryStorage),
        ("MEMORY://", MemoryStorage),
        ("memory://?keep_history=true", MemoryStorage),
        ("memory://?keep_history=false", MinimalMemoryStorage),
        ("memory://?keep_history=off", MinimalMemoryStorage),
    ],
)
def test_memory_uri(uri, cls):
    assert type(open_storage(uri)) is cls


@pytest.mark.parametrize("target", ["memory://", "sqlite:///x.db", "postgresql://h/db", "a+b.c://"])
def test_is_uri(target):
    assert is_uri(target)


@pytest.mark.parametrize("target", ["x.db", "/abs/x.db", "C:\\data\\x.db", "dir/memory://"])
def test_paths_are_not_uris(target):
    assert not is_uri(target)


@pytest.mark.parametrize(
    "target, words",
    [
        ("mysql://host/db", ["unknown storage URI scheme 'mysql'", "mysql://host/db"]),
        ("memory://?size=3", ["unknown storage URI option 'size'", "(allowed: keep_history)"]),
        ("memory://somewhere", ["memory URI names no host or path"]),
        ("sqlite:///tmp/x.db?journal=wal", ["unknown storage URI option 'journal'", "synchronous"]),
        ("sqlite:///tmp/x.db?synchronous=off", ["synchronous='off' is not full or normal"]),
        ("sqlite:///tmp/x.db?keep_history=perhaps", ["keep_history='perhaps'", "true or false"]),
        ("sqlite:///tmp/x.db?read_only=1&read_only=0", ["'read_only' given twice"]),
        ("sqlite://host/x.db", ["SQLite URI has no host", "sqlite:///absolute/path.db"]),
        ("sqlite://", ["SQLite URI needs a file path"]),
        ("postgresql://u@h/db?keep_history=maybe", ["keep_history='maybe'"]),
        ("postgresql://u@h/db?bogus=1", ["bad PostgreSQL URI", "bogus"]),
        ("postgresql://u@h/db?lock_wait=soon", ["lock_wait='soon' is not a number of seconds"]),
        ("postgresql://u@h/db?lock_wait=nan", ["lock_wait='nan'"]),
        ("postgres://u@h/db?pool_size=-1", ["pool_size='-1' is not an integer >= 0"]),
        ("postgres://u@h/db?schema=a&schema=b", ["'schema' given twice"]),
    ],
)
def test_bad_uris_fail_with_one_line_naming_the_problem(target, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        open_storage(target)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert list(tmp_path.iterdir()) == []  # nothing created on disk


def test_a_password_is_not_repeated_in_errors():
    with pytest.raises(ValueError) as info:
        open_storage("postgresql://me:s3cret@localhost/db?bogus=1")
    assert "s3cret" not in str(info.value)
    assert "me:***@localhost" in str(info.value)


@pytest.mark.parametrize("target", [3, b"/tmp/x.db", object()])
def test_other_types_are_rejected(target):
    with pytest.raises(TypeError, match="storage target must be"):
        open_storage(target)


def test_bytes_pathlike_is_rejected():
    class BytesPath:
        def __fspath__(self):
            return b"/tmp/x.db"

    with pytest.raises(TypeError, match="str path, not bytes"):
        open_storage(BytesPath())


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_a_path_is_an_sqlite_file(tmp_path, as_path):
    storage = open_storage(as_path(tmp_path / "data.db"))
    try:
        assert type(storage) is SQLiteStorage
        assert storage.keep_history and not storage.read_only
    finally:
        storage.close()
    assert (tmp_path / "data.db").exists()


def test_sqlite_uri_with_options(tmp_path):
    path = tmp_path / "with space.db"
    storage = open_storage(f"sqlite://{str(path).replace(' ', '%20')}?keep_history=false")
    try:
        assert type(storage) is SQLiteStorage
        assert not storage.keep_history
    finally:
        storage.close()
    assert path.exists()
    storage = open_storage(
        f"sqlite://{str(path).replace(' ', '%20')}?read_only=true&keep_history=no&synchronous=NORMAL"
    )
    try:
        assert storage.read_only and not storage.keep_history
    finally:
        storage.close()
