"""Benchmarks for autofact (not shipped with the package).

Run from the repository root: ``python -m benchmarks.run --quick``.
"""
