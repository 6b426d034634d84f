"""One benchmark worker process: runs the workloads once and reports timings.

Workers are started with the ``spawn`` method, so each is a fresh interpreter whose
memory figures are its own. Several workers of one repetition meet at a barrier
before each timed phase, so at concurrency 2 the phases really overlap.

Peak memory per phase: Linux keeps a resident-set high-water mark (``VmHWM``) that
writing ``5`` to ``/proc/self/clear_refs`` resets; the worker resets it before each
phase and reads it after. Where that is impossible the figure is the process-wide
``ru_maxrss`` so far (still a true peak, but cumulative).
"""

from __future__ import annotations

import gc
import resource
import time
import traceback
from typing import Any

from bench.systems import BACKENDS, Place
from bench.workloads import PHASES, Session

BARRIER_TIMEOUT = 3600.0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kib(resettable: bool) -> int:
    if resettable:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_phases(job: dict[str, Any], worker: int, barrier: Any) -> dict[str, Any]:
    """Run the job's workloads in this process; returns timings and peak memory."""
    backend = BACKENDS[job["backend"]]
    place = Place(**job["place"])
    session = Session(backend, place, worker, job["layout"], job["count"],
                      in_memory_seconds=job.get("in_memory_seconds", 1.0))
    session.open()
    try:
        if not backend.shared:
            session.prepare([worker])
        phases: dict[str, dict[str, float]] = {}
        for name in PHASES:
            if name != "add" and name not in job["workloads"]:
                continue  # add is always run: every other phase needs its data
            timed = PHASES[name](session)
            gc.collect()
            resettable = _reset_peak()
            barrier.wait(BARRIER_TIMEOUT)
            start = time.perf_counter()
            objects = timed()
            seconds = time.perf_counter() - start
            if isinstance(objects, tuple):
                objects, seconds = objects  # the workload timed its passes itself
            phases[name] = {"seconds": seconds, "objects": objects,
                            "peak_rss_kib": _peak_kib(resettable)}
            if objects <= 0 or objects % session.count:
                raise AssertionError(f"{name} handled {objects} objects, "
                                     f"not a multiple of {session.count}")
            barrier.wait(BARRIER_TIMEOUT)
        session.check()
    finally:
        session.close()
    return {"phases": phases,
            "process_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def worker_main(job: dict[str, Any], worker: int, barrier: Any, results: Any) -> None:
    """Process entry point: run, then put ``(worker, result-or-error)`` on ``results``."""
    try:
        outcome = {"ok": True, **run_phases(job, worker, barrier)}
    except BaseException as exc:  # report every failure to the parent, then stop
        barrier.abort()  # release a partner waiting at the barrier
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()}
    results.put((worker, outcome))
