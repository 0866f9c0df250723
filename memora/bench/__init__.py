"""Benchmarks of Memora against the libraries it builds on, run as `python -m memora.bench`.

- `core` (memora.bench.core): the embedded store against raw hnswlib and networkx on seeded
  synthetic data (memora.bench.data), with targets and a PASS/FAIL per row.

Benchmarks are tools, not part of the database: nothing in memora imports this package.
"""
