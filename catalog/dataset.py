"""Dataset export for the dataset-generation team (docs/pipeline.md): `cones export --where … --to URI`.

Writes, under the target URI (any fsspec store):

    generations.parquet   one row per generated image: id, subjects, prompt, seed, image_path,
                          model_fingerprint, mask_ids, sampling params, one column per score metric
                          (mean over targets), and the image bytes with `include_bytes`
    images/<sha256>.png   the images the rows point to (`image_path` is relative to the URI)

or, for the dataset team's loaders, one of two layouts that carry the same rows and columns:

- `imagefolder` (Hugging Face `datasets.load_dataset("imagefolder", data_dir=…)`,
  https://huggingface.co/docs/datasets/image_load#imagefolder): `metadata.jsonl`, one JSON
  object per image with `file_name` (relative to the folder) and the columns, beside
  `images/<generation id>.png`;
- `webdataset` (https://github.com/webdataset/webdataset): tar shards `shard-000000.tar`, … in
  which each image is a sample `<generation id>.png` + `<generation id>.json` (the columns), each
  shard at most `shard_bytes` (a single sample larger than that gets a shard of its own).

In both, `params` is kept as its JSON text, as in Parquet: its keys differ between runs, and a
loader that infers one schema for all rows would drop or refuse the ones that differ.

The filter is one boolean SQL expression over that wide row (e.g. `presence = 1 AND len(subjects) = 2`).
DuckDB parses it as an expression, never as part of a statement, and it runs under the catalog's
SQL sandbox (catalog/readonly.py), so a filter can select rows but not change anything or read
anything outside the catalog.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from catalog.catalog import Catalog
from catalog.export import render, write_uri

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
DATA_FILE = "generations.parquet"
METADATA_FILE = "metadata.jsonl"
FORMATS = ("parquet", "imagefolder", "webdataset")
DEFAULT_SHARD_BYTES = 256_000_000  # within the 100 MB–1 GB the WebDataset docs suggest per shard


def export_sql(metrics: list[str]) -> str:
    """The SELECT behind an export: generations with one averaged column per score metric."""
    columns = "".join(f', avg(s.value) FILTER (WHERE s.metric = \'{m}\') AS "{m}"' for m in metrics)
    return (
        "SELECT g.id, g.subjects, g.prompt, g.seed, g.image_uri, g.model_fingerprint, g.mask_ids, g.params"
        f"{columns} FROM generations g LEFT JOIN clip_scores s ON s.generation = g.id "
        "GROUP BY g.id, g.subjects, g.prompt, g.seed, g.image_uri, g.model_fingerprint, g.mask_ids, g.params"
    )


def export_dataset(
    catalog: Catalog,
    *,
    where: str,
    to: str,
    include_bytes: bool = False,
    format: str = "parquet",
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Export the generations matching `where` (one boolean SQL expression) and their images to `to`; returns counts."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if include_bytes and format != "parquet":
        raise ValueError(f"include_bytes is for the parquet format; {format} holds the images themselves")
    table, metrics = _selected(catalog, where)
    target = to.rstrip("/")
    if format == "imagefolder":
        return {**_write_imagefolder(catalog, table, target), "metrics": metrics, "format": format}
    if format == "webdataset":
        return {**_write_webdataset(catalog, table, target, shard_bytes), "metrics": metrics, "format": format}
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
    return {"rows": table.num_rows, "images": len(set(paths)), "uri": f"{target}/{DATA_FILE}", "metrics": metrics,
            "format": format}


def _selected(catalog: Catalog, where: str) -> tuple[pa.Table, list[str]]:
    metrics = [r["metric"] for r in catalog.query("SELECT DISTINCT metric FROM clip_scores ORDER BY metric").to_pylist()]
    metrics = [m for m in metrics if _IDENTIFIER.match(m)]  # metric names become column names
    return catalog.query(export_sql(metrics), where=where).sort_by("id"), metrics


def _records(catalog: Catalog, table: pa.Table) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(the row's columns, its PNG) for every row; the image is read when its row is written."""
    for row in table.to_pylist():
        data = catalog.get_bytes(row.pop("image_uri"))
        yield row, data


def _write_imagefolder(catalog: Catalog, table: pa.Table, target: str) -> dict[str, Any]:
    lines = []
    for row, data in _records(catalog, table):
        # one file per generation, named by its id: two generations with equal pixels stay two rows
        file_name = f"images/{row['id']}.png"
        write_uri(f"{target}/{file_name}", data)
        lines.append(json.dumps({"file_name": file_name, **row}, ensure_ascii=False))
    write_uri(f"{target}/{METADATA_FILE}", ("\n".join(lines) + "\n" if lines else "").encode())
    return {"rows": len(lines), "images": len(lines), "uri": f"{target}/{METADATA_FILE}"}


def _write_webdataset(catalog: Catalog, table: pa.Table, target: str, shard_bytes: int) -> dict[str, Any]:
    if shard_bytes < 3 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE:
        raise ValueError(f"shard_bytes {shard_bytes} is too small to hold a tar archive of one sample")
    shards: list[dict[str, Any]] = []
    shard = _Shard()
    rows = 0
    for row, data in _records(catalog, table):
        # the key names the sample: WebDataset splits a member's name at its first dot (ids are hex)
        members = [(f"{row['id']}.png", data), (f"{row['id']}.json", json.dumps(row, ensure_ascii=False).encode())]
        if shard.samples and shard.size_with(members) > shard_bytes:
            shards.append(shard.write(f"{target}/shard-{len(shards):06d}.tar"))
            shard = _Shard()
        shard.add(members)
        rows += 1
    if shard.samples:
        shards.append(shard.write(f"{target}/shard-{len(shards):06d}.tar"))
    return {"rows": rows, "images": rows, "uri": target, "shards": shards}


class _Shard:
    """One tar archive built in memory; `size_with` is the archive's exact size once closed with more members.

    A member costs a 512-byte header plus its data padded to 512 bytes (ustar names ≤ 100 characters:
    a 32-hex id and its extension); closing adds two zero blocks and pads to tarfile.RECORDSIZE.
    """

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def size_with(self, members: list[tuple[str, bytes]]) -> int:
        offset = self._tar.offset + sum(tarfile.BLOCKSIZE + _padded(len(data)) for _, data in members)
        return -(-(offset + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def add(self, members: list[tuple[str, bytes]]) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same rows give the same bytes
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def write(self, uri: str) -> dict[str, Any]:
        self._tar.close()
        data = self._buffer.getvalue()
        write_uri(uri, data)
        return {"uri": uri, "samples": self.samples, "bytes": len(data)}


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
