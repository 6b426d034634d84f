"""Every command has help text and an entry in docs/cli.md; the installed script runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.cli.main import cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def command_names() -> list[str]:
    return sorted(cli.commands)


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help_text_with_an_example(name):
    command = cli.commands[name]
    assert command.help and len(command.help.strip()) > 20, f"atoll {name} has no help text"
    assert "Example" in command.help, f"atoll {name}'s help shows no example"


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_a_docs_entry(name):
    headings = re.findall(r"^## `atoll ([a-z-]+)", DOCS.read_text(), re.MULTILINE)
    assert name in headings, f"docs/cli.md has no '## `atoll {name}`' section"


def test_docs_list_no_command_that_does_not_exist():
    headings = re.findall(r"^## `atoll ([a-z-]+)", DOCS.read_text(), re.MULTILINE)
    assert sorted(headings) == command_names()


def _script() -> str:
    here = Path(sys.executable).parent / "atoll"
    found = str(here) if here.exists() else shutil.which("atoll")
    if not found:
        pytest.fail("the atoll console script is not installed (pip install -e .)")
    return found


def test_the_installed_script_runs_as_a_subprocess(sqlite_target, tmp_path):
    script = _script()
    done = subprocess.run([script, "ls", sqlite_target, "people"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ada" in done.stdout and "PersistentMapping" in done.stdout
    missing = subprocess.run([script, "info", str(tmp_path / "nope.db")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    piped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ})
    assert piped.returncode == 0 and "Commands:" in piped.stdout
