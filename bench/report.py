"""The benchmark's text output: Markdown tables, one per atoll/ZODB pair.

Each row is one figure of one configuration; beside the two systems' objects/s is
their ratio atoll/ZODB (above 1: atoll is faster) and each one's peak memory. A
second table shows how the cost of adding and of cold reads grows with the object
count, which is where a per-object cost that is not constant would show.
"""

from __future__ import annotations

import math
from typing import Any

from bench.systems import BACKENDS
from bench.workloads import LAYOUTS, WORKLOADS

SCALING_WORKLOADS = ["add", "read_cold"]

# The speed targets atoll states against ZODB FileStorage (objects of ~100 bytes,
# 10,000 and 100,000 objects, one process): atoll/ZODB must be at least this.
TARGETS = [("atoll-sqlite", "zodb-filestorage", "add", 3.0),
           ("atoll-sqlite", "zodb-filestorage", "update", 3.0),
           ("atoll-sqlite", "zodb-filestorage", "read_cold", 1.5),
           ("atoll-sqlite", "zodb-filestorage", "read_hot", 1.0)]
TARGET_COUNTS = [10_000, 100_000]


def _index(records: list[dict]) -> dict[tuple, dict]:
    return {(r["backend"], r["layout"], r["count"], r["concurrency"], r["workload"]): r
            for r in records}


def _rate(record: dict | None) -> str:
    if record is None:
        return "-"
    if record["status"] == "ok":
        return f"{record['objects_per_second']:,.0f}"
    return "n/a" if record["status"] == "not available" else "error"


def _mib(record: dict | None) -> str:
    if record is None or record["status"] != "ok":
        return "-"
    return f"{record['peak_rss_mib']:.0f}"


def _label(key: str) -> str:
    return BACKENDS[key].label if key in BACKENDS else key


def ratio(atoll: dict | None, zodb: dict | None) -> float | None:
    """atoll's objects/s over ZODB's, or None when either figure is missing."""
    if not atoll or not zodb or atoll["status"] != "ok" or zodb["status"] != "ok":
        return None
    return atoll["objects_per_second"] / zodb["objects_per_second"]


def _order(records: list[dict]) -> list[tuple]:
    configs = {(r["layout"], r["count"], r["concurrency"]) for r in records}
    return sorted(configs, key=lambda c: (LAYOUTS.index(c[0]), c[1], c[2]))


def pair_table(records: list[dict], atoll_key: str, zodb_key: str) -> str | None:
    """The Markdown table comparing two backends, or None if neither was run."""
    index = _index(records)
    mine = [r for r in records if r["backend"] in (atoll_key, zodb_key)]
    if not mine:
        return None
    a_label, z_label = _label(atoll_key), _label(zodb_key)
    lines = [
        f"| layout | objects | procs | workload | {a_label} obj/s | {z_label} obj/s "
        f"| atoll/ZODB | atoll MiB | ZODB MiB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in mine)]
    for layout, count, c in _order(mine):
        for w in workloads:
            a = index.get((atoll_key, layout, count, c, w))
            z = index.get((zodb_key, layout, count, c, w))
            if a is None and z is None:
                continue
            r = ratio(a, z)
            lines.append(f"| {layout} | {count:,} | {c} | {w} | {_rate(a)} | {_rate(z)} | "
                         f"{'-' if r is None else f'{r:.2f}x'} | {_mib(a)} | {_mib(z)} |")
    return "\n".join(lines)


def scaling_table(records: list[dict]) -> str | None:
    """Seconds per run of add and cold read against object count (mapping, 1 process)."""
    rows = [r for r in records if r["layout"] == "mapping" and r["concurrency"] == 1
            and r["workload"] in SCALING_WORKLOADS and r["status"] == "ok"]
    counts = sorted({r["count"] for r in rows})
    if len(counts) < 2:
        return None
    index = _index(rows)
    head = " | ".join(f"s at {n:,}" for n in counts)
    lines = [f"| backend | workload | {head} | time x per 10x objects |",
             "| --- | --- | " + " | ".join("---:" for _ in counts) + " | ---: |"]
    backends = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    for b in backends:
        for w in SCALING_WORKLOADS:
            cells = [index.get((b, "mapping", n, 1, w)) for n in counts]
            seconds = [None if c is None else c["count"] / c["objects_per_second"] for c in cells]
            known = [(n, s) for n, s in zip(counts, seconds) if s]
            growth = "-"
            if len(known) >= 2:
                (n0, s0), (n1, s1) = known[-2], known[-1]
                growth = f"{(s1 / s0) ** (1 / math.log10(n1 / n0)):.1f}"
            label = _label(b)
            shown = " | ".join("-" if s is None else f"{s:.3f}" for s in seconds)
            lines.append(f"| {label} | {w} | {shown} | {growth} |")
    return "\n".join(lines)


def _verdict(measured: float, target: float) -> str:
    # Run-to-run noise is a few percent, so a near miss is shown as such, not as met.
    if measured >= target:
        return "yes"
    return "within 5%" if measured >= 0.95 * target else "NO"


def targets_table(records: list[dict]) -> str | None:
    """Each stated target beside the measured ratio, or None if none was measured."""
    index = _index(records)
    lines = ["| comparison | layout | objects | workload | target | measured | met |",
             "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    for atoll_key, zodb_key, workload, target in TARGETS:
        for layout in ("mapping", "oobtree"):
            for count in TARGET_COUNTS:
                r = ratio(index.get((atoll_key, layout, count, 1, workload)),
                          index.get((zodb_key, layout, count, 1, workload)))
                if r is None:
                    continue
                lines.append(f"| {_label(atoll_key)} / {_label(zodb_key)} | {layout} | "
                             f"{count:,} | {workload} | >= {target:.1f}x | {r:.2f}x | "
                             f"{_verdict(r, target)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def _repetitions(document: dict[str, Any]) -> str:
    """How many runs the figures are medians of (merged runs may differ)."""
    counts = sorted({len(r["samples"]) for r in document["results"] if r["status"] == "ok"})
    if not counts:
        return str(document["settings"]["repetitions"])
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def format_header(document: dict[str, Any]) -> str:
    """Where, when and how the figures were measured, as a Markdown paragraph list."""
    m = document["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items()
                         if version)
    settings = document["settings"]
    commands = [c if isinstance(c, dict) else {"command": c, "atoll_commit": m.get("atoll_commit")}
                for c in document.get("commands", [document["command"]])]
    return "\n".join([
        *(f"- Command: `{c['command']}` (atoll commit {c.get('atoll_commit') or 'unknown'})"
          for c in commands),
        f"- Run: {document['started']} to {document['finished']}",
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB RAM; {m['platform']}",
        f"- Software: Python {m['python']}, SQLite {m['sqlite']}, "
        f"PostgreSQL {m['postgresql'] or 'not used'}; {packages}",
        f"- Durability: SQLite synchronous={settings['sqlite_synchronous']} for atoll "
        "(its default) and RelStorage (set to match); FileStorage fsyncs every commit",
        f"- Figures: {settings['figure']} ({_repetitions(document)} repetitions); "
        f"memory: {settings['memory']}",
    ])


def format_report(document: dict[str, Any]) -> str:
    """All tables of a results document, as Markdown."""
    records = document["results"]
    parts = []
    targets = targets_table(records)
    if targets:
        parts.append("### Targets (1 process)\n\n" + targets)
    for atoll_key, zodb_key in document["pairs"]:
        table = pair_table(records, atoll_key, zodb_key)
        if table:
            parts.append(f"### {_label(atoll_key)} vs {_label(zodb_key)}\n\n{table}")
    scaling = scaling_table(records)
    if scaling:
        parts.append("### Cost growth (mapping layout, 1 process)\n\n" + scaling)
    missing: dict[tuple, list[str]] = {}
    for r in records:
        if r["status"] != "ok":
            where = f"{r['layout']} {r['count']:,} x{r['concurrency']}"
            places = missing.setdefault((_label(r["backend"]), r["status"],
                                         r.get("reason", "")), [])
            if where not in places:
                places.append(where)
    if missing:
        parts.append("Not measured (layout, objects x processes):\n\n" + "\n".join(
            f"- {label}, {', '.join(places)}: {status} ({reason})"
            for (label, status, reason), places in sorted(missing.items())))
    return "\n\n".join(parts)
