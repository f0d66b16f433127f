"""Benchmarks registered on `cones bench` (see cones_cli/bench.py)."""

from cones_cli.bench import app  # noqa: F401
