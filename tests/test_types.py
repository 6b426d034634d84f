"""mypy finds no errors in src/ (the package ships ``py.typed``; the settings are in
pyproject.toml, ``[tool.mypy]``), so type hints stay true as the code changes (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_errors_in_src():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"mypy found errors in src/:\n{result.stdout}{result.stderr}", pytrace=False)
