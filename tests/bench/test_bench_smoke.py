"""A tiny-N run of the benchmark: it runs, prints a table and saves sound JSON.

This runs in atoll's own environment, where ZODB is usually not installed: then the
ZODB rows must say "not available" and the atoll rows must still be measured. No
assertion is about speed; only about the shape of the results.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import report
from bench.runner import main
from bench.systems import BACKENDS, PAIRS
from bench.workloads import LAYOUTS, WORKLOADS

LOCAL = ["atoll-memory", "atoll-sqlite", "zodb-mapping", "zodb-filestorage"]


def _expected_status(key: str) -> str:
    return "ok" if BACKENDS[key].missing() is None else "not available"


def _run(tmp_path, capsys, *args: str) -> tuple[int, str, dict]:
    out_json = tmp_path / "results.json"
    code = main(["--tmpdir", str(tmp_path / "data"), "--json", str(out_json),
                 "--plot", "", "--repetitions", "1", "--in-memory-seconds", "0", *args])
    printed = capsys.readouterr().out
    return code, printed, json.loads(out_json.read_text())


def test_tiny_run_prints_a_table_with_every_figure(tmp_path, capsys):
    code, printed, document = _run(tmp_path, capsys, "--backends", ",".join(LOCAL),
                                   "--counts", "10,20", "--concurrency", "1")
    assert code == 0
    records = document["results"]
    # One record per backend, layout, count and workload, each with its expected status.
    assert len(records) == len(LOCAL) * len(LAYOUTS) * 2 * len(WORKLOADS)
    for r in records:
        assert r["status"] == _expected_status(r["backend"]), r
        if r["status"] == "ok":
            assert r["objects_per_second"] > 0 and math.isfinite(r["objects_per_second"])
            assert r["peak_rss_mib"] > 0 and r["process_peak_rss_mib"] > 0
            assert len(r["samples"]) == 1
    assert _expected_status("atoll-memory") == "ok"  # the core is always measurable
    # The printed tables: a heading per pair and a row per figure.
    assert "### atoll MemoryStorage vs ZODB MappingStorage" in printed
    assert "### atoll SQLiteStorage vs ZODB FileStorage" in printed
    for layout in LAYOUTS:
        for workload in WORKLOADS:
            assert f"| {layout} | 20 | 1 | {workload} |" in printed
    assert "### Cost growth" in printed
    assert document["machine"]["cpus"] >= 1
    assert document["settings"]["sqlite_synchronous"] == "FULL"


def test_two_processes_share_or_split_the_database(tmp_path, capsys):
    backends = ["atoll-memory", "atoll-sqlite"]
    code, printed, document = _run(tmp_path, capsys, "--backends", ",".join(backends),
                                   "--counts", "10", "--concurrency", "2",
                                   "--layouts", "mapping", "--workloads", "add,read_cold")
    assert code == 0
    records = document["results"]
    assert {(r["backend"], r["workload"]) for r in records} == {
        (b, w) for b in backends for w in ("add", "read_cold")}
    for r in records:
        assert r["concurrency"] == 2
        assert r["status"] == _expected_status(r["backend"])
        if r["status"] == "ok":
            assert r["objects_per_second"] > 0
    assert "| mapping | 10 | 2 | add |" in printed
    assert "| mapping | 10 | 2 | read_warm |" not in printed


def test_merge_keeps_figures_of_other_configurations(tmp_path, capsys):
    _run(tmp_path, capsys, "--backends", "atoll-memory", "--counts", "10",
         "--concurrency", "1", "--layouts", "mapping", "--workloads", "add")
    _, _, document = _run(tmp_path, capsys, "--backends", "atoll-memory", "--counts", "12",
                          "--concurrency", "1", "--layouts", "mapping", "--workloads", "add",
                          "--merge")
    assert sorted(r["count"] for r in document["results"]) == [10, 12]
    # Each run is listed once, with the atoll commit it measured; running a command
    # again replaces its entry as it replaced its figures.
    _, _, document = _run(tmp_path, capsys, "--backends", "atoll-memory", "--counts", "12",
                          "--concurrency", "1", "--layouts", "mapping", "--workloads", "add",
                          "--merge")
    listed = [entry["command"] for entry in document["commands"]]
    assert len(listed) == 2 and "--counts 10 " in listed[0] and "--counts 12 " in listed[1]
    assert all("atoll_commit" in entry for entry in document["commands"])
    header = report.format_header(document)
    assert header.count("- Command: `python -m bench") == 2 and "(atoll commit " in header


def _record(backend: str, rate: float | None, count: int = 1000) -> dict:
    base = {"backend": backend, "label": BACKENDS[backend].label, "layout": "mapping",
            "count": count, "concurrency": 1, "workload": "add"}
    if rate is None:
        return dict(base, status="not available", reason="module ZODB not available")
    return dict(base, status="ok", objects_per_second=rate, peak_rss_mib=30.0)


def test_pair_table_shows_the_ratio_beside_each_pair():
    records = [_record("atoll-sqlite", 300.0), _record("zodb-filestorage", 100.0)]
    table = report.pair_table(records, "atoll-sqlite", "zodb-filestorage")
    assert "| mapping | 1,000 | 1 | add | 300 | 100 | 3.00x | 30 | 30 |" in table
    assert report.pair_table(records, "atoll-memory", "zodb-mapping") is None


def test_unavailable_side_has_no_ratio():
    records = [_record("atoll-memory", 300.0), _record("zodb-mapping", None)]
    table = report.pair_table(records, "atoll-memory", "zodb-mapping")
    assert "| add | 300 | n/a | - |" in table


def test_scaling_table_reports_time_growth_per_tenfold_count():
    records = [_record("atoll-memory", 1000.0, 1000), _record("atoll-memory", 500.0, 10000)]
    table = report.scaling_table(records)
    # 1 s at 1,000 objects, 20 s at 10,000: cost grew 20x for 10x the objects.
    assert "| atoll MemoryStorage | add | 1.000 | 20.000 | 20.0 |" in table


def test_bad_arguments_name_the_problem(capsys):
    with pytest.raises(SystemExit):
        main(["--backends", "atoll-nothing"])
    assert "unknown atoll-nothing" in capsys.readouterr().err


def test_every_pair_names_one_atoll_and_one_zodb_backend():
    for atoll_key, zodb_key in PAIRS:
        assert BACKENDS[atoll_key].system == "atoll"
        assert BACKENDS[zodb_key].system == "zodb"


def test_targets_table_says_whether_each_target_is_met():
    records = []
    for backend, rates in (("atoll-sqlite", (90.0, 30.0)), ("zodb-filestorage", (30.0, 31.0))):
        for workload, rate in zip(("add", "read_hot"), rates):
            records.append(dict(_record(backend, rate, 10_000), workload=workload))
    table = report.targets_table(records)
    assert "| mapping | 10,000 | add | >= 3.0x | 3.00x | yes |" in table
    assert "| mapping | 10,000 | read_hot | >= 1.0x | 0.97x | within 5% |" in table
    assert report.targets_table(records[:1]) is None
