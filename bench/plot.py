"""The PNG plot: objects per second against object count, log-log, one panel per pair.

A flat line means a constant cost per object; a falling one, a per-object cost that
grows with the transaction or the database. Only the ``mapping`` layout at
concurrency 1 is drawn, so each panel compares like with like. matplotlib is a
dependency of the benchmark only; without it the plot is skipped.
"""

from __future__ import annotations

import math
from typing import Any

from bench.systems import BACKENDS
from bench.workloads import WORKLOADS


def plot(document: dict[str, Any], path: str) -> str | None:
    """Write the plot to ``path``; returns None, or why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return "matplotlib is not installed"
    rows = [r for r in document["results"] if r["status"] == "ok"
            and r["layout"] == "mapping" and r["concurrency"] == 1]
    present = {r["backend"] for r in rows}
    pairs = [p for p in document["pairs"] if p[0] in present or p[1] in present]
    if not pairs:
        return "no figures for the mapping layout at concurrency 1"
    columns = min(2, len(pairs))
    lines = math.ceil(len(pairs) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 4.2 * lines + 0.8),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (atoll_key, zodb_key) in zip(axes.flat, pairs):
        for backend, style in ((atoll_key, "-o"), (zodb_key, "--s")):
            for i, workload in enumerate(WORKLOADS):
                points = sorted((r["count"], r["objects_per_second"]) for r in rows
                                if r["backend"] == backend and r["workload"] == workload)
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style,
                            color=colors[i % len(colors)], markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("objects written or read")
        ax.set_ylabel("objects per second")
        ax.set_title(f"{BACKENDS[atoll_key].label} (solid) vs "
                     f"{BACKENDS[zodb_key].label} (dashed)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    legend = [Line2D([], [], color=colors[i % len(colors)], label=w)
              for i, w in enumerate(WORKLOADS)]
    legend += [Line2D([], [], color="black", linestyle="-", marker="o", label="atoll"),
               Line2D([], [], color="black", linestyle="--", marker="s", label="ZODB")]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
