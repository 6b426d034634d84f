"""How commands print: values readable or as JSON, tables, and progress bars."""

from __future__ import annotations

import datetime
import decimal
import json
import sys
import time
import uuid
from typing import IO, Any, Sequence

import click

from atoll.ids import z64
from atoll.inspection import Instance, Reference
from atoll.progress import ProgressStep

__all__ = ["oid_text", "tid_text", "tid_time", "jsonable", "format_value", "print_json", "table", "ProgressBar"]


def oid_text(oid: bytes) -> str:
    """An oid as the commands show and take it: ``0x`` and 16 hex digits."""
    return "0x" + oid.hex()


def tid_text(tid: bytes) -> str:
    """A tid as the command line shows it: ``0x`` and 16 hex digits."""
    return "0x" + tid.hex()


def tid_time(tid: bytes) -> str:
    """A tid's commit time, ISO 8601 in UTC to the millisecond."""
    from persistent.timestamp import TimeStamp

    if tid == z64:
        return "-"
    seconds = TimeStamp(tid).timeTime()
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stand_in_name(value: Any) -> str | None:
    dotted = getattr(value, "_dotted", None) if isinstance(value, type) else None
    return dotted if isinstance(dotted, str) and dotted else None


def jsonable(value: Any) -> Any:
    """``value`` (from :func:`atoll.inspection.describe_record`) as plain JSON data.

    References become ``{"$ref": "db:0x..", "class": ...}``; objects of the
    record's classes ``{"$class": name, "args": [...], "state": ...}``; bytes
    ``{"$bytes": hex}``; a dict with keys that are not strings a list of pairs.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Reference):
        ref: dict[str, Any] = {"$ref": f"{value.database + ':' if value.database else ''}{oid_text(value.oid)}"}
        if value.class_name:
            ref["class"] = value.class_name
        if value.weak:
            ref["weak"] = True
        return ref
    if isinstance(value, Instance):
        out: dict[str, Any] = {"$class": value.class_name}
        if value.args:
            out["args"] = [jsonable(a) for a in value.args]
        if value.state is not None:
            out["state"] = jsonable(value.state)
        if value.items:
            out["items"] = [jsonable(i) for i in value.items]
        return out
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: jsonable(v) for k, v in value.items()}
        return {"$pairs": [[jsonable(k), jsonable(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"$set": [jsonable(v) for v in sorted(value, key=repr)]}
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID, datetime.timedelta)):
        return str(value)
    name = _stand_in_name(value)
    if name:
        return {"$global": name}
    return {"$repr": repr(value)}


def format_value(value: Any, indent: int = 0, width: int = 100) -> str:
    """``value`` as readable text: one line when short, else one item per line."""
    flat = _flat(value)
    if len(flat) + indent <= width:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        lines = [f"{pad}{_flat(k)}: {format_value(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"
    if isinstance(value, (list, tuple)):
        lines = [pad + format_value(v, indent + 2, width) for v in value]
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        return opening + "\n" + ",\n".join(lines) + "\n" + " " * indent + closing
    if isinstance(value, Instance):
        inner = []
        if value.args:
            inner.append(pad + "args: " + format_value(list(value.args), indent + 2, width))
        if value.state is not None:
            inner.append(pad + "state: " + format_value(value.state, indent + 2, width))
        if value.items:
            inner.append(pad + "items: " + format_value(value.items, indent + 2, width))
        return value.class_name + "(\n" + ",\n".join(inner) + "\n" + " " * indent + ")"
    return flat


def _flat(value: Any) -> str:
    if isinstance(value, Reference):
        return str(value)
    if isinstance(value, Instance):
        parts = [_flat(a) for a in value.args]
        if value.state is not None:
            parts.append("state=" + _flat(value.state))
        if value.items:
            parts.append("items=" + _flat(value.items))
        return f"{value.class_name}({', '.join(parts)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flat(k)}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_flat(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    name = _stand_in_name(value)
    if name:
        return f"<global {name}>"
    return repr(value)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (for ``--json``)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows under headers, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """A ``progress`` callable that draws a bar on a terminal and plain lines elsewhere.

    Given an :class:`atoll.progress.ProgressStep`, it shows the phase, counts, rate
    and time left (when the total is known); a plain string is printed as a line.
    """

    def __init__(self, stream: IO[str] | None = None, width: int = 30, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.interval = interval
        self._phase: str | None = None
        self._started = 0.0
        self._last_line = 0.0
        self._drawn = False

    def __call__(self, step: str) -> None:
        if not isinstance(step, ProgressStep):
            self._line(str(step))
            return
        phase = step.phase
        now = time.monotonic()
        if phase != self._phase:
            self._end_bar()
            self._phase = phase
            self._started = now
        finished = step.finished
        if not self.tty:
            if finished or now - self._last_line >= max(self.interval, 1.0):
                self._last_line = now
                click.echo(self._describe(step, now), file=self.stream)
        else:
            click.echo("\r" + self._describe(step, now, bar=True) + "\x1b[K", file=self.stream, nl=False)
            self._drawn = True
        if finished:
            self._end_bar()
            self._phase = None
            if str(step) != ProgressStep(phase, step.done, step.total, step.unit, True):
                click.echo(str(step), file=self.stream)  # the operation's own summary line

    def _describe(self, step: ProgressStep, now: float, bar: bool = False) -> str:
        done, total, unit = step.done, step.total, step.unit
        elapsed = max(now - self._started, 1e-9)
        rate = done / elapsed
        counted = f"{done:,}" if total is None else f"{done:,}/{total:,}"
        parts = [f"{step.phase}"]
        if bar and total:
            filled = int(self.width * min(done, total) / total)
            parts.append("[" + "#" * filled + " " * (self.width - filled) + "]")
        parts.append(f"{counted} {unit}".rstrip())
        if done and elapsed > 0.05:
            parts.append(f"{rate:,.0f}/s")
        if getattr(step, "finished", False):
            parts.append(f"done in {_duration(elapsed)}")
        elif total and rate > 0 and done < total:
            parts.append(f"{_duration((total - done) / rate)} left")
        return "  ".join(parts)

    def _line(self, text: str) -> None:
        self._end_bar()
        click.echo(text, file=self.stream)

    def _end_bar(self) -> None:
        if self._drawn:
            click.echo("", file=self.stream)
            self._drawn = False

    def close(self) -> None:
        """End a bar that is still drawn."""
        self._end_bar()
