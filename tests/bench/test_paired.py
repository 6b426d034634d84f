"""bench.paired runs two systems' in-memory reads in alternation and prints a table.

In atoll's own environment ZODB is usually absent, so the pair here is two atoll
backends; the test asserts the table's shape and that every figure is a rate, not
any speed.
"""

from __future__ import annotations

import re

import pytest

from bench.paired import main


def test_a_tiny_paired_run_prints_one_row_per_workload(tmp_path, capsys):
    code = main(["--pair", "atoll-memory,atoll-sqlite", "--layouts", "oobtree", "--count", "20",
                 "--rounds", "3", "--processes", "2", "--tmpdir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line for line in printed.splitlines() if line.startswith("| oobtree ")]
    assert [row.split("|")[3].strip() for row in rows] == ["read_hot", "read_steamin"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[3].replace(",", "")) > 0 and float(cells[4].replace(",", "")) > 0
        assert re.fullmatch(r"\d+\.\d\dx", cells[5])
        assert len(cells[6].split(", ")) == 2  # one ratio per pair of processes


def test_a_pair_must_name_two_known_backends(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--pair", "atoll-memory"])
    assert exc.value.code == 2
    assert "--pair takes two of" in capsys.readouterr().err
