"""Dataset export for the dataset-generation team (docs/pipeline.md): `cones export --where … --to URI`.

Writes, under the target URI (any fsspec store):

    generations.parquet   one row per generated image: id, subjects, prompt, seed, image_path,
                          model_fingerprint, mask_ids, sampling params, one column per score metric
                          (mean over targets), and the image bytes with `include_bytes`
    images/<sha256>.png   the images the rows point to (`image_path` is relative to the URI)

The filter is one boolean SQL expression over that wide row (e.g. `presence = 1 AND len(subjects) = 2`).
DuckDB parses it as an expression, never as part of a statement, and it runs under the catalog's
SQL sandbox (catalog/readonly.py), so a filter can select rows but not change anything or read
anything outside the catalog.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from catalog.catalog import Catalog
from catalog.export import render, write_uri

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
DATA_FILE = "generations.parquet"


def export_sql(metrics: list[str]) -> str:
    """The SELECT behind an export: generations with one averaged column per score metric."""
    columns = "".join(f', avg(s.value) FILTER (WHERE s.metric = \'{m}\') AS "{m}"' for m in metrics)
    return (
        "SELECT g.id, g.subjects, g.prompt, g.seed, g.image_uri, g.model_fingerprint, g.mask_ids, g.params"
        f"{columns} FROM generations g LEFT JOIN clip_scores s ON s.generation = g.id "
        "GROUP BY g.id, g.subjects, g.prompt, g.seed, g.image_uri, g.model_fingerprint, g.mask_ids, g.params"
    )


def export_dataset(catalog: Catalog, *, where: str, to: str, include_bytes: bool = False) -> dict[str, Any]:
    """Export the generations matching `where` (one boolean SQL expression) and their images to `to`; returns counts."""
    metrics = [r["metric"] for r in catalog.query("SELECT DISTINCT metric FROM clip_scores ORDER BY metric").to_pylist()]
    metrics = [m for m in metrics if _IDENTIFIER.match(m)]  # metric names become column names
    table = catalog.query(export_sql(metrics), where=where).sort_by("id")
    target = to.rstrip("/")
    paths = []
    blobs = []
    for uri in table.column("image_uri").to_pylist():
        name = uri.rsplit("/", 1)[-1]
        data = catalog.get_bytes(uri)
        write_uri(f"{target}/images/{name}", data)
        paths.append(f"images/{name}")
        blobs.append(data)
    table = table.drop_columns(["image_uri"]).append_column("image_path", pa.array(paths, pa.string()))
    if include_bytes:
        table = table.append_column("image", pa.array(blobs, pa.binary()))
    write_uri(f"{target}/{DATA_FILE}", render(table, "parquet"))
    return {"rows": table.num_rows, "images": len(set(paths)), "uri": f"{target}/{DATA_FILE}", "metrics": metrics}
