"""Sphinx configuration of atoll's API reference (``docs/api``).

Build it with ``python -m sphinx -W -b html docs/api docs/api/_build``; the test
suite does the same (tests/test_api_reference.py), so an undocumented public name
fails the tests.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

project = "atoll"
extensions = ["sphinx.ext.autodoc", "atoll_api"]
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
html_theme = "alabaster"
