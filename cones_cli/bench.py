"""`cones bench …`: each area's benchmarks, from their own modules."""

from __future__ import annotations

import typer

from cones_cli import bench_catalog, bench_fanout, bench_neurons, bench_plan, bench_scale, bench_select

app = typer.Typer(no_args_is_help=True, add_completion=False)
for part in (bench_catalog, bench_neurons, bench_fanout, bench_plan, bench_scale, bench_select):
    app.add_typer(part.app)
