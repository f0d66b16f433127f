"""The `cones` command. Sub-commands live in their own modules; heavy imports
(torch, prefect, duckdb) happen inside commands so `cones --help` stays fast."""

from __future__ import annotations

import typer

from cones_cli.bench import app as bench_app
from cones_cli.toy import app as toy_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Cones: concept neurons for customized generation.")
app.add_typer(toy_app, name="toy", help="The embedded toy world: render, train, evaluate.")
app.add_typer(bench_app, name="bench", help="Benchmarks; each prints JSON with --json.")

# Commands owned by other areas register themselves on `app` (catalog, sql, export, demo).
from cones_cli import commands  # noqa: E402,F401
