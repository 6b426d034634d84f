"""Sphinx extension: the API reference of every public module, found automatically.

``.. atoll-modules::`` expands to one section per module of the package named by the
``atoll_api_package`` setting (``atoll``) that defines ``__all__``: an ``automodule``
of its public names with their docstrings. A module is public when its name has no
part starting with ``_`` and it defines ``__all__``; a new module is picked up by
defining both a module docstring and ``__all__``.

Every public name must have a docstring: the build warns (an error under ``-W``)
for a module, class, function, method or property without one, and for a name in a
package's ``__all__`` whose defining module is not documented. Methods of the
``transaction`` package's data-manager and synchronizer protocols are documented by
that package and left out.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: Documented by the transaction package (IDataManager, ISynchronizer), implemented
#: by connections under those names.
PROTOCOL_METHODS = frozenset({
    "abort", "commit", "tpc_begin", "tpc_vote", "tpc_finish", "tpc_abort", "sortKey",
    "savepoint", "newTransaction", "beforeCompletion", "afterCompletion",
})

#: Kinds of objects that must have a docstring.
MUST_HAVE_DOCSTRING = frozenset({"module", "class", "exception", "function", "method", "property"})


def public_modules(package_name: str) -> list[str]:
    """The public modules of a package that define ``__all__``, sorted by name."""
    package = importlib.import_module(package_name)
    names = [package_name]
    if hasattr(package, "__path__"):
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            if any(part.startswith("_") for part in info.name.split(".")):
                continue
            names.append(info.name)
    found = []
    for name in sorted(names):
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            found.append(name)
    return found


class AtollModules(SphinxDirective):
    """``.. atoll-modules::``: the reference of every public module."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        package = self.env.config.atoll_api_package
        modules = public_modules(package)
        documented = set(modules)
        lines: list[str] = []
        for name in modules:
            module = importlib.import_module(name)
            here, elsewhere = [], []
            for public in module.__all__:
                obj = getattr(module, public, None)
                home = getattr(obj, "__module__", None)
                if not (inspect.isclass(obj) or inspect.isfunction(obj)) or home == name:
                    here.append(public)  # defined here (data has no __module__: it is)
                elif home in documented:
                    elsewhere.append(f"{home}.{getattr(obj, '__qualname__', public)}")
                else:
                    logger.warning(
                        "%s.%s is public, but its module %s is not in the reference "
                        "(give that module a docstring and __all__)", name, public, home,
                        location=(self.env.docname, self.lineno),
                    )
            elsewhere += self.check_data_documented(name, module, here, modules)
            lines += [name, "=" * len(name), "", f".. automodule:: {name}"]
            if here:
                lines += [f"   :members: {', '.join(here)}", "   :undoc-members:", "   :show-inheritance:"]
            lines.append("")
            if elsewhere:
                lines += ["Also importable from here: " + ", ".join(f":py:obj:`{target}`" for target in elsewhere), ""]
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="atoll-modules"), container)
        return container.children


    def check_data_documented(self, name: str, module: Any, public: list[str], modules: list[str]) -> list[str]:
        """Warn for a public constant without a ``#:`` comment (autodoc would
        leave it out of the reference without a word). Returns the constants that
        are re-exports of one documented in another module, as ``module.name``."""
        data = [
            n for n in public
            if not n.startswith("__") and not any(
                check(getattr(module, n, None)) for check in (inspect.isclass, inspect.isroutine, inspect.ismodule)
            )
        ]
        reexported = []
        for n in data:
            obj = getattr(module, n, None)
            if _has_doc_comment(name, n) or _documents_itself(obj):
                continue
            home = next(
                (other for other in modules if other != name
                 and getattr(importlib.import_module(other), n, None) is obj and _has_doc_comment(other, n)),
                None,
            )
            if home is not None:
                public.remove(n)
                reexported.append(f"{home}.{n}")
            else:
                logger.warning(
                    "data %s.%s has no docstring (write a '#:' comment above it)", name, n,
                    location=(self.env.docname, self.lineno),
                )
        return reexported


def _documents_itself(obj: Any) -> bool:
    """A command-line command (click) carries its own help text."""
    help_text = getattr(obj, "help", None)
    return isinstance(help_text, str) and bool(help_text.strip())


def _has_doc_comment(module_name: str, name: str) -> bool:
    comments = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    return any(line.strip() for line in comments.get(("", name), []))


def skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    if what in ("class", "exception") and name in PROTOCOL_METHODS:
        return True
    return None


def require_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in MUST_HAVE_DOCSTRING and not any(line.strip() for line in lines):
        logger.warning("%s %s has no docstring", what, name, type="atoll", subtype="undocumented")


def setup(app: Any) -> dict:
    app.add_config_value("atoll_api_package", "atoll", "env")
    app.add_directive("atoll-modules", AtollModules)
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-docstring", require_docstring)
    return {"parallel_read_safe": True, "env_version": 1}
