"""`cones sql` and `cones catalog compact`. Heavy imports happen inside commands."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cones_cli.output import console, emit

app = typer.Typer(add_completion=False)  # its commands sit at the top of `cones` (cones_cli/app.py)
catalog_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(catalog_app, name="catalog", help="Catalog maintenance: compact small files.")

CatalogOpt = Annotated[
    str,
    typer.Option("--catalog", "-c", envvar="CONES_CATALOG", help="Catalog URI: path, file://, memory://, s3://."),
]


@app.command("sql")
def sql(
    query: Annotated[str, typer.Argument(help="Read-only SQL over the catalog views.")],
    catalog: CatalogOpt = "",
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json | parquet")] = "table",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write the result to this path or URI.")] = None,
) -> None:
    """Query the catalog with read-only SQL.

    Tables: models, model_layers, subjects, subject_images, concept_masks, generations, clip_scores.
    Mask functions: mask_size, mask_intersection_size, mask_jaccard, mask_range_size.
    Files, URLs, settings and extensions are out of reach (the SQL sandbox in docs/catalog.md).
    Examples: docs/catalog.md.
    """
    from catalog import CatalogError, QueryError
    from catalog.export import FORMATS, cell_text, render, write_uri

    if format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")
    from rich.markup import escape

    cat = _open(catalog)
    try:
        result = cat.query(query)
    except QueryError as exc:  # DuckDB's parser or binder: shown plainly, no traceback
        console.print(f"[red]SQL error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    except CatalogError as exc:  # a refusal (catalog/readonly.py) says what and why; the query may hold '[…]'
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if format == "table":
        if out:
            raise typer.BadParameter("--out needs --format csv, json or parquet", param_hint="--out")
        from rich.table import Table

        table = Table(show_lines=False)
        for name in result.column_names:
            table.add_column(name)
        for row in result.to_pylist():
            table.add_row(*(cell_text(v) for v in row.values()))
        console.print(table)
        console.print(f"{result.num_rows} row(s)", style="dim")
        return
    data = render(result, format)
    if out:
        write_uri(out, data)
        console.print(f"wrote {result.num_rows} row(s) to {out}", style="dim")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@catalog_app.command("compact")
def compact(
    uri: Annotated[str, typer.Argument(envvar="CONES_CATALOG", help="Catalog URI.")],
    table: Annotated[list[str] | None, typer.Option("--table", "-t", help="Only these tables (repeatable).")] = None,
    grace_s: Annotated[
        float, typer.Option(help="Keep replaced files this long so readers with an older snapshot keep working.")
    ] = 3600.0,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Merge each table's small commit files into one sorted file, without losing or duplicating a row."""
    from dataclasses import asdict

    from catalog.compact import check_tables
    from catalog.compact import compact as run_compact

    try:
        check_tables(table)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--table") from None
    reports = run_compact(_open(uri), tables=list(table) if table else None, grace_s=grace_s)
    emit({r.table: {k: v for k, v in asdict(r).items() if k != "table"} for r in reports}, as_json=json_, title="compact")


def _open(uri: str):
    from catalog import CatalogURIError, load_catalog

    if not uri:
        raise typer.BadParameter("pass --catalog URI or set CONES_CATALOG", param_hint="--catalog")
    try:
        cat = load_catalog(uri)
    except CatalogURIError as exc:
        raise typer.BadParameter(str(exc), param_hint="--catalog") from exc
    if not cat.store.fs.exists(cat.store.root):
        raise typer.BadParameter(f"no catalog at {uri!r} (the folder does not exist); check the URI", param_hint="--catalog")
    return cat
