"""Progress reports of long work (pack, check, copy, class renames, backup).

Long operations take a ``progress`` callable and call it with one argument from time
to time. The argument is a :class:`ProgressStep`: a ``str`` (a readable line, so
``progress=print`` or a logger works as it is) that also carries the counts, so that
a front end such as the ``atoll`` command can draw a bar with a rate and the time
left. Code that reports uses :class:`Reporter`, which limits how often the callable
is called (by count and by time), so that reporting costs nothing measurable in a
loop over millions of records.

>>> steps = []
>>> report = Reporter(steps.append, "marking", total=3, unit="objects", every=1, interval=0)
>>> report.advance(2)
>>> report.advance()
>>> report.done()
>>> steps
['marking: 2 of 3 objects', 'marking: 3 of 3 objects', 'marking: 3 of 3 objects, done']
>>> steps[0].phase, steps[0].done, steps[0].total, steps[0].finished
('marking', 2, 3, False)
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["ProgressStep", "Progress", "Reporter"]


class ProgressStep(str):
    """One report: the line of text, with ``phase``, ``done``, ``total`` (None when
    not known in advance), ``unit`` and ``finished`` as attributes."""

    phase: str
    done: int
    total: int | None
    unit: str
    finished: bool

    def __new__(
        cls,
        phase: str,
        done: int,
        total: int | None = None,
        unit: str = "",
        finished: bool = False,
        text: str | None = None,
    ) -> ProgressStep:
        if text is None:
            counted = f"{done:,}" if total is None else f"{done:,} of {total:,}"
            text = f"{phase}: {counted}{' ' + unit if unit else ''}{', done' if finished else ''}"
        step = super().__new__(cls, text)
        step.phase = phase
        step.done = done
        step.total = total
        step.unit = unit
        step.finished = finished
        return step


#: What long operations accept: called with a :class:`ProgressStep` (a ``str``).
Progress = Callable[[str], None]


class Reporter:
    """Counts work done in one phase and reports it to ``progress`` (may be None)
    at most once per ``every`` units and once per ``interval`` seconds, and always
    at :meth:`done`."""

    def __init__(
        self,
        progress: Progress | None,
        phase: str,
        *,
        total: int | None = None,
        unit: str = "",
        every: int = 1000,
        interval: float = 0.25,
    ) -> None:
        self.progress = progress
        self.phase = phase
        self.total = total
        self.unit = unit
        self.count = 0  # units done so far
        self._every = max(1, every)
        self._interval = interval
        self._next_count = self._every  # report again once count reaches this...
        self._next_time = 0.0  # ...and the clock reaches this

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done; report if it is time to."""
        self.count += n
        if self.progress is None or self.count < self._next_count:
            return
        self._next_count = self.count + self._every
        now = time.monotonic()
        if now < self._next_time:
            return
        self._next_time = now + self._interval
        self.progress(ProgressStep(self.phase, self.count, self.total, self.unit))

    def done(self, text: str | None = None) -> None:
        """Report the phase finished (with ``text`` as the line, if given)."""
        if self.progress is not None:
            total = self.count if self.total is None else self.total
            self.progress(ProgressStep(self.phase, self.count, total, self.unit, True, text))
