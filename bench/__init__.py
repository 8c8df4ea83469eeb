"""Benchmarks, run from the repository root as ``python -m bench.<name>``; each records its
table in docs/benchmarks.md with ``--record``."""
