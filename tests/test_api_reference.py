"""The API reference (docs/api) builds with warnings as errors, so every public name
has a docstring; an undocumented one fails the build (issue 17)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

sphinx_build = pytest.importorskip("sphinx.cmd.build", reason="Sphinx is in the docs extra (part of test)")

API_DOCS = Path(__file__).resolve().parent.parent / "docs" / "api"


def build(out: Path, *extra: str, builder: str = "html") -> int:
    return sphinx_build.build_main(["-W", "--keep-going", "-q", "-E", "-b", builder, *extra, str(API_DOCS), str(out)])


def test_api_reference_builds_with_warnings_as_errors(tmp_path, capsys):
    status = build(tmp_path / "html")
    assert status == 0, capsys.readouterr().err
    page = (tmp_path / "html" / "index.html").read_text()
    for documented in ("atoll.db.DB.open", "atoll.connection.Connection.onCloseCallback",
                       "atoll.serialize.PersistentReference.weak", "atoll.errors.ConflictError"):
        assert f'id="{documented}"' in page


def test_an_undocumented_public_name_fails_the_build(tmp_path, monkeypatch, capsys):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        """A package whose public names are not all documented."""
        from fakepkg.hidden import Hidden
        __all__ = ["documented", "undocumented", "Thing", "LIMIT", "Hidden"]

        def documented():
            """Has a docstring."""

        def undocumented():
            pass

        class Thing:
            """A class with one undocumented method."""

            def method(self):
                pass

        LIMIT = 3
    '''))
    (package / "hidden.py").write_text('"""No __all__ here."""\n\nclass Hidden:\n    """Documented, in a module left out."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    status = build(tmp_path / "out", "-D", "atoll_api_package=fakepkg", builder="dummy")
    err = capsys.readouterr().err
    assert status != 0
    assert "function fakepkg.undocumented has no docstring" in err
    assert "method fakepkg.Thing.method has no docstring" in err
    assert "data fakepkg.LIMIT has no docstring" in err
    assert "fakepkg.Hidden is public, but its module fakepkg.hidden is not in the reference" in err
    assert "fakepkg.documented" not in err
