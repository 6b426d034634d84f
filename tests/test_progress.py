"""ProgressStep and Reporter: readable lines that carry counts, reported sparingly."""

from __future__ import annotations

import doctest

import atoll.progress
from atoll.progress import ProgressStep, Reporter


def test_module_doctest_passes():
    result = doctest.testmod(atoll.progress)
    assert result.attempted > 0 and result.failed == 0


def test_a_step_is_its_text_and_carries_counts():
    step = ProgressStep("copying", 1500, 3000, "transactions")
    assert step == "copying: 1,500 of 3,000 transactions"
    assert (step.phase, step.done, step.total, step.unit, step.finished) == ("copying", 1500, 3000, "transactions", False)


def test_a_step_without_total_counts_only():
    assert ProgressStep("marking", 7) == "marking: 7"


def test_reporter_reports_once_per_every_units():
    steps: list[str] = []
    report = Reporter(steps.append, "sweeping", every=10, interval=0)
    for _ in range(35):
        report.advance()
    assert [s.done for s in steps] == [10, 20, 30]


def test_reporter_limits_reports_by_time():
    steps: list[str] = []
    report = Reporter(steps.append, "sweeping", every=1, interval=3600)
    for _ in range(100):
        report.advance()
    assert len(steps) == 1


def test_done_always_reports_and_uses_the_given_text():
    steps: list[str] = []
    report = Reporter(steps.append, "packing", every=10**9)
    report.advance(5)
    report.done("packed x: removed 5 objects")
    assert steps == ["packed x: removed 5 objects"]
    assert steps[0].finished and steps[0].done == 5 and steps[0].total == 5


def test_no_callable_means_no_work():
    report = Reporter(None, "packing", every=1)
    report.advance(3)
    report.done()
    assert report.count == 3
