"""The README's example runs, stores its objects, and finds them on the next run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "quickstart.py"


def run_example(path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLE.parent.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_stores_and_reads_back(tmp_path):
    path = tmp_path / "books.db"
    first = run_example(path)
    assert "this example has run 1 time(s)" in first
    assert "Dune by Frank Herbert, lent 1 time(s)" in first
    second = run_example(path)
    assert "this example has run 2 time(s)" in second
    assert "Dune by Frank Herbert, lent 2 time(s)" in second
    assert path.exists()
