"""`cones bench …`: each area adds its benchmarks in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

# Registration by import: each module decorates functions with `@app.command`.
from cones_cli import bench_catalog, bench_neurons, bench_fanout, bench_plan, bench_scale  # noqa: E402,F401
