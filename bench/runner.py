"""The benchmark command: runs the matrix, prints the table, saves JSON and a plot.

For each configuration (layout, object count, concurrency) and each repetition, every
selected backend runs once, one after the other, in the given order on even
repetitions and the reverse order on odd ones, so atoll and ZODB figures of a pair
are taken minutes apart at most, on the same machine, and neither always goes first. A run is ``concurrency`` fresh
worker processes (:mod:`bench.worker`) on a fresh database.

Figures: objects per second of one workload is (objects handled by all workers) /
(the slowest worker's time), the median over repetitions. Memory is the highest
per-process peak resident set seen in that workload (MiB).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sqlite3
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from bench import report
from bench.systems import (BACKENDS, DEFAULT_PG_DSN, SQLITE_SYNCHRONOUS, PAIRS, Backend,
                           Place, create_pg_databases, new_place, pg_unavailable,
                           remove_place)
from bench.worker import worker_main
from bench.workloads import LAYOUTS, WORKLOADS, Session

HERE = Path(__file__).resolve().parent
DEFAULT_COUNTS = [1000, 10000]
DOCS_START = "<!-- bench results: start -->"
DOCS_END = "<!-- bench results: end -->"


def _csv(kind: type, choices: list | None = None) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind``, each among ``choices``."""

    def parse(text: str) -> list:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            unknown = [v for v in values if v not in choices]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(map(str, unknown))}; choose from {', '.join(choices)}")
        return values
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark atoll against ZODB (zodbshootout workloads).",
        epilog="example: python -m bench --counts 1000,10000 --repetitions 3",
    )
    p.add_argument("--backends", type=_csv(str, list(BACKENDS)), default=list(BACKENDS),
                   help="comma-separated backends (default: all): " + ", ".join(BACKENDS))
    p.add_argument("--layouts", type=_csv(str, LAYOUTS), default=list(LAYOUTS),
                   help="mapping, oobtree, multidb (default: all)")
    p.add_argument("--workloads", type=_csv(str, WORKLOADS), default=list(WORKLOADS),
                   help="which to report (add always runs); default: all")
    p.add_argument("--counts", type=_csv(int), default=DEFAULT_COUNTS,
                   help="objects per process (default: 1000,10000)")
    p.add_argument("--concurrency", type=_csv(int), default=[1, 2],
                   help="worker processes (default: 1,2)")
    p.add_argument("--repetitions", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--in-memory-seconds", type=float, default=1.0,
                   help="least time read_hot and read_steamin repeat their pass (fastest counts)")
    p.add_argument("--pg-dsn", default=DEFAULT_PG_DSN,
                   help="PostgreSQL server to create scratch databases on")
    p.add_argument("--tmpdir", default=str(HERE / "results" / "tmp"),
                   help="where file storages are written (same disk as the project)")
    p.add_argument("--json", default=str(HERE / "results" / "latest.json"),
                   help="results file ('' for none)")
    p.add_argument("--merge", action="store_true",
                   help="keep results of --json for configurations this run does not measure")
    p.add_argument("--plot", default=str(HERE / "results" / "latest.png"),
                   help="PNG plot ('' for none; skipped if matplotlib is missing)")
    p.add_argument("--docs", default="",
                   help="also write the tables into this Markdown file, between the "
                        f"lines {DOCS_START!r} and {DOCS_END!r}")
    p.add_argument("--from-json", default="",
                   help="measure nothing: print (and plot, and --docs) a saved results file")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one run may take before it is stopped")
    options = p.parse_args(argv)
    if options.repetitions < 1 or min(options.counts) < 2 or min(options.concurrency) < 1:
        p.error("--repetitions and --concurrency must be >= 1, --counts >= 2")
    return options


def _atoll_commit() -> str | None:
    """The commit of atoll's source measured, marked when src/atoll has local changes."""
    root = HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/atoll"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" with uncommitted changes in src/atoll" if dirty else "")


def machine_info(pg_dsn: str | None) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for dist in ["atoll", "ZODB", "RelStorage", "persistent", "transaction", "BTrees",
                 "psycopg", "psycopg2-binary"]:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info = {"atoll_commit": _atoll_commit(),
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": memory_gib,
            "sqlite": sqlite3.sqlite_version, "packages": versions, "postgresql": None}
    if pg_dsn:
        try:
            import psycopg

            with psycopg.connect(pg_dsn) as conn:
                info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
        except Exception:  # the server is optional: no version then
            pass
    return info


def _prepare_shared(backend: Backend, place: Place, layout: str, count: int,
                    workers: int) -> None:
    """Create the shared database's schema, root and containers before workers start."""
    session = Session(backend, place, 0, layout, count)
    session.open()
    try:
        session.prepare(range(workers))
    finally:
        session.close()


def run_once(backend: Backend, place: Place, job: dict[str, Any], concurrency: int,
             timeout: float) -> dict[str, Any]:
    """One repetition: ``concurrency`` spawned workers; returns per-workload figures."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(concurrency)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(job, w, barrier, results), daemon=True)
             for w in range(concurrency)]
    for proc in procs:
        proc.start()
    outcomes: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outcomes) < concurrency:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
            try:
                worker, outcome = results.get(timeout=min(remaining, 5.0))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    return {"ok": False, "error": "a worker process died without a result"}
                continue
            outcomes[worker] = outcome
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    failures = [o for o in outcomes.values() if not o["ok"]]
    if failures:
        # A worker stopped by its partner's failure only reports a broken barrier.
        failures.sort(key=lambda o: o["error"].startswith("BrokenBarrierError"))
        return failures[0]
    figures = {}
    for name in outcomes[0]["phases"]:
        phases = [o["phases"][name] for o in outcomes.values()]
        seconds = max(ph["seconds"] for ph in phases)
        objects = sum(ph["objects"] for ph in phases)
        figures[name] = {"objects_per_second": objects / seconds if seconds > 0 else float("inf"),
                         "seconds": seconds,
                         "peak_rss_mib": max(ph["peak_rss_kib"] for ph in phases) / 1024}
    return {"ok": True, "figures": figures,
            "process_peak_rss_mib": max(o["process_peak_rss_kib"] for o in outcomes.values())
            / 1024}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_matrix(options: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every selected configuration; returns one record per figure."""
    backends = [BACKENDS[k] for k in options.backends]
    unavailable: dict[str, str] = {}
    pg_problem = None
    if any(b.postgres for b in backends):
        pg_problem = pg_unavailable(options.pg_dsn)
    for b in backends:
        reason = b.missing() or (pg_problem if b.postgres else None)
        if reason:
            unavailable[b.key] = reason
    records: list[dict[str, Any]] = []
    failed: dict[tuple, str] = {}  # (backend, layout, concurrency) -> error: skip larger N
    configs = [(layout, count, c) for count in sorted(options.counts)
               for layout in options.layouts for c in options.concurrency]
    for index, (layout, count, c) in enumerate(configs, 1):
        samples: dict[str, list[dict]] = {b.key: [] for b in backends}
        errors: dict[str, str] = {}
        for rep in range(options.repetitions):
            # Alternate the order per repetition, so that no system always runs first
            # (or always right after the other one, on a machine whose speed drifts).
            for b in (backends if rep % 2 == 0 else backends[::-1]):
                if b.key in unavailable or b.key in errors:
                    continue
                if (b.key, layout, c) in failed:
                    errors[b.key] = f"skipped: failed at a smaller count ({failed[b.key, layout, c]})"
                    continue
                tag = f"{b.key}-{layout}-{count}-c{c}-r{rep}"
                _log(f"[{index}/{len(configs)}] {tag} ...")
                outcome = _run_in_place(b, options, layout, count, c, tag)
                if outcome["ok"]:
                    samples[b.key].append(outcome)
                    _log("    " + "  ".join(f"{n} {f['objects_per_second']:,.0f}/s"
                                           for n, f in outcome["figures"].items()))
                else:
                    errors[b.key] = _one_line(outcome["error"])
                    failed[b.key, layout, c] = errors[b.key]
                    _log(f"    failed: {outcome['error']}")
                    if outcome.get("traceback"):
                        _log(outcome["traceback"])
        for b in backends:
            base = {"backend": b.key, "system": b.system, "label": b.label, "layout": layout,
                    "count": count, "concurrency": c}
            for workload in options.workloads:
                record = dict(base, workload=workload)
                if b.key in unavailable:
                    record.update(status="not available", reason=unavailable[b.key])
                elif b.key in errors:
                    record.update(status="error", reason=errors[b.key])
                else:
                    figures = [s["figures"][workload] for s in samples[b.key]]
                    rates = [f["objects_per_second"] for f in figures]
                    record.update(
                        status="ok", objects_per_second=statistics.median(rates),
                        samples=rates,
                        seconds=statistics.median(f["seconds"] for f in figures),
                        peak_rss_mib=round(max(f["peak_rss_mib"] for f in figures), 1),
                        process_peak_rss_mib=round(
                            max(s["process_peak_rss_mib"] for s in samples[b.key]), 1))
                records.append(record)
    return records


def _one_line(message: str, limit: int = 160) -> str:
    """The first line of an error message, shortened for a table."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _run_in_place(b: Backend, options: argparse.Namespace, layout: str, count: int,
                  c: int, tag: str) -> dict[str, Any]:
    place = new_place(options.tmpdir, options.pg_dsn, tag)
    try:
        if b.postgres:
            create_pg_databases(place, ["a", "b"] if layout == "multidb" else ["a"])
        if b.shared:
            _prepare_shared(b, place, layout, count, c)
        job = {"backend": b.key, "layout": layout, "count": count,
               "workloads": options.workloads,
               "in_memory_seconds": options.in_memory_seconds,
               "place": {"directory": place.directory, "pg_prefix": place.pg_prefix,
                         "pg_dsn": place.pg_dsn}}
        return run_once(b, place, job, c, options.timeout)
    except Exception as exc:  # a backend failing to set up is a result, not a crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        remove_place(place)


def _key(record: dict) -> tuple:
    return (record["backend"], record["layout"], record["count"], record["concurrency"],
            record["workload"])


def save_json(path: str, document: dict[str, Any]) -> None:
    """Save the document readably: one line per figure, so that diffs stay small."""
    head = {k: v for k, v in document.items() if k != "results"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "results": [\n'
    text += ",\n".join("  " + json.dumps(r) for r in document["results"]) + "\n ]\n}\n"
    with open(path, "w") as f:
        f.write(text)


def write_docs(path: str, document: dict[str, Any]) -> None:
    """Replace the results section of the Markdown file ``path`` with this run's."""
    text = Path(path).read_text()
    start, end = text.find(DOCS_START), text.find(DOCS_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {DOCS_START!r} ... {DOCS_END!r} section to replace")
    body = report.format_header(document) + "\n\n" + report.format_report(document)
    Path(path).write_text(text[:start + len(DOCS_START)] + "\n\n" + body + "\n\n"
                          + text[end:])


def _commands(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs whose figures a results document holds, each with its atoll commit
    (older documents list bare commands, measured at the document's one commit)."""
    commit = document.get("machine", {}).get("atoll_commit")
    return [c if isinstance(c, dict) else {"command": c, "atoll_commit": commit}
            for c in document.get("commands", [document["command"]])]


def measure(options: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Run the matrix and return the results document (merged if --merge)."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    records = run_matrix(options)
    command = ("python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    commands = [{"command": command, "atoll_commit": _atoll_commit()}]
    if options.merge and options.json and os.path.exists(options.json):
        with open(options.json) as f:
            old = json.load(f)
        fresh = {_key(r) for r in records}
        records = [r for r in old["results"] if _key(r) not in fresh] + records
        # A command run again replaced its figures: it is listed once, with this commit.
        commands = [c for c in _commands(old) if c["command"] != command] + commands
        started = old["started"]
    return {
        "command": command,
        "commands": commands,  # every run whose figures this document holds, in order
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(options.pg_dsn),
        "settings": {"repetitions": options.repetitions,
                     "sqlite_synchronous": SQLITE_SYNCHRONOUS.upper(),
                     "figure": "objects/s, all workers' objects over the slowest worker's "
                               "time, median over repetitions",
                     "memory": "highest per-process peak RSS during the workload, MiB"},
        "pairs": PAIRS,
        "results": records,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; save JSON, plot, docs. Returns 0 or 1."""
    options = parse_args(argv)
    if options.from_json:
        with open(options.from_json) as f:
            document = json.load(f)
    else:
        document = measure(options, argv)
    print(report.format_report(document))
    if options.json and not options.from_json:
        os.makedirs(os.path.dirname(os.path.abspath(options.json)), exist_ok=True)
        save_json(options.json, document)
        _log(f"results saved to {options.json}")
    if options.plot:
        from bench import plot

        problem = plot.plot(document, options.plot)
        _log(f"plot skipped: {problem}" if problem else f"plot saved to {options.plot}")
    if options.docs:
        write_docs(options.docs, document)
        _log(f"tables written into {options.docs}")
    return 0 if all(r["status"] != "error" for r in document["results"]) else 1
