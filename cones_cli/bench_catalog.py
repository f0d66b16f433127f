"""`cones bench storage` and `cones bench catalog`."""

from __future__ import annotations

from typing import Annotated

import typer

from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py


@app.command("storage")
def storage(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random masks.")] = 0,
) -> None:
    """Encoded size of SD-1.5-scale masks (19,169,280 K/V weights) vs dense fp32 and the entropy bound."""
    from catalog.benchmarks import storage_bench

    rows = storage_bench(seed=seed)
    for row in rows:
        row["ratio_to_entropy"] = round(row["bytes"] / row["entropy_bytes"], 4)
    emit(rows, as_json=json_, title="mask storage")


@app.command("catalog")
def catalog(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    uri: Annotated[str | None, typer.Option(help="Build the bench catalogs under this URI (default: a temp dir).")] = None,
    workers: Annotated[int, typer.Option(help="Threads for the Jaccard matrix.")] = 2,
    quick: Annotated[bool, typer.Option(help="Every size 10x smaller (smoke test).")] = False,
) -> None:
    """All-pairs Jaccard of 1,000 SD-scale masks, an aggregate over 10M clip_scores rows, one mask lookup among 100,000."""
    from catalog.benchmarks import catalog_bench

    emit(catalog_bench(uri=uri, quick=quick, workers=workers), as_json=json_, title="catalog")
