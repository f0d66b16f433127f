"""The `cones` command, composed from each area's Typer app. Heavy imports (torch, prefect, duckdb) happen
inside commands, so `cones --help` stays fast."""

from __future__ import annotations

import typer

from cones_cli import bench, catalog_cmds, concept_cmds, config_cmds, flow_cmds, init_cmd, toy, toy_compare, toy_validate

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Cones: concept neurons for customized generation.")

toy_app = typer.Typer(no_args_is_help=True, add_completion=False)
for part in (toy, toy_validate, toy_compare):  # the toy world's commands, then the lab's that run on it
    toy_app.add_typer(part.app)
app.add_typer(toy_app, name="toy", help="The embedded toy world: render, train, evaluate.")
app.add_typer(bench.app, name="bench", help="Benchmarks; each prints JSON with --json.")
# cones sql, catalog, run, export, demo, config, init, concept
for part in (catalog_cmds, flow_cmds, config_cmds, init_cmd, concept_cmds):
    app.add_typer(part.app)
