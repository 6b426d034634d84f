"""Benchmarks of atoll side by side with ZODB, measured in one run on one machine.

Run ``python -m bench --help`` (from the repository root, in the benchmark venv:
see ``docs/benchmarks.md``). The package is not part of atoll: it is never
installed with it, and its dependencies (ZODB, RelStorage, drivers, matplotlib)
live in ``bench/requirements.txt``.
"""
