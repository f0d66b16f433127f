"""Combination lists kept as files: a Parquet or CSV file of subject subsets, read in batches (docs/scale.md).

A file has one combination per row in a column `subjects`: a list of subject ids in Parquet
(or a string, like CSV), ids separated by `|` in CSV (`dog|cat`); subject ids never hold `|`
(cones_tasks.ingest.SUBJECT_ID_RULE). Any fsspec URI works (local path, file://, s3://, …).
Rows are streamed `batch_rows` at a time, so a file of any length is planned in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from catalog.errors import CatalogError
from cones_tasks.subsets import COMBINATION_FILE_SUFFIXES

COLUMN = "subjects"
SEPARATOR = "|"
SUFFIXES = COMBINATION_FILE_SUFFIXES


class CombinationFileError(CatalogError, ValueError):
    """A combinations file that cannot be read as one (wrong suffix, no `subjects` column, unreadable)."""


def combination_file_digest(uri: str) -> str:
    """sha256 of the file's bytes, read 4 MB at a time: a grid planned from a file is named by its content."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    except FileNotFoundError as exc:
        raise CombinationFileError(f"combinations file {uri!r} does not exist") from exc
    return digest.hexdigest()


def combination_rows(uri: str, *, batch_rows: int = 65_536) -> Iterator[tuple[list[str], np.ndarray]]:
    """(subject ids, offsets) per batch of rows: row i of a batch is ids[offsets[i]:offsets[i + 1]]."""
    name = uri.lower()
    if not name.endswith(SUFFIXES):
        raise CombinationFileError(f"combinations file {uri!r}: the name must end with one of {', '.join(SUFFIXES)}")
    try:
        with fsspec.open(uri, "rb", compression="infer") as fh:
            if name.endswith((".parquet", ".pq")):
                parquet = pq.ParquetFile(fh)
                if COLUMN not in parquet.schema_arrow.names:
                    raise CombinationFileError(f"combinations file {uri!r} has no {COLUMN!r} column (has {parquet.schema_arrow.names})")
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=[COLUMN]):
                    yield _split(batch.column(0))
            else:
                reader = pv.open_csv(
                    fh, convert_options=pv.ConvertOptions(column_types={COLUMN: pa.string()}, include_columns=[COLUMN]),
                    read_options=pv.ReadOptions(block_size=1 << 22),
                )
                for batch in reader:
                    column = batch.column(0)
                    for start in range(0, len(column), batch_rows):
                        yield _split(column.slice(start, batch_rows))
    except FileNotFoundError as exc:
        raise CombinationFileError(f"combinations file {uri!r} does not exist") from exc
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
        raise CombinationFileError(f"combinations file {uri!r} cannot be read: {exc}") from exc


def _split(column: pa.Array) -> tuple[list[str], np.ndarray]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.split_pattern(column.fill_null(""), SEPARATOR)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise CombinationFileError(f"column {COLUMN!r} must hold lists of subject ids or '{SEPARATOR}'-separated ids")
    column = column.fill_null(pa.scalar([], column.type))
    offsets = np.asarray(column.offsets, dtype=np.int64)
    values = pc.utf8_trim_whitespace(column.values.slice(offsets[0], offsets[-1] - offsets[0]).cast(pa.string()))
    ids = values.to_pylist()
    offsets = offsets - offsets[0]
    empty = [i for i, v in enumerate(ids) if v == ""]  # "dog|" or an empty cell: drop the empty names
    if empty:
        keep = np.ones(len(ids), bool)
        keep[empty] = False
        row_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        counts = np.bincount(row_of[keep], minlength=len(offsets) - 1)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        ids = [v for v in ids if v != ""]
    return ids, offsets


def count_combination_rows(uri: str) -> int:
    """Rows in a combinations file (Parquet: from its footer; CSV: one streamed pass)."""
    if uri.lower().endswith((".parquet", ".pq")):
        try:
            with fsspec.open(uri, "rb") as fh:
                return pq.ParquetFile(fh).metadata.num_rows
        except FileNotFoundError as exc:
            raise CombinationFileError(f"combinations file {uri!r} does not exist") from exc
    return sum(len(offsets) - 1 for _, offsets in combination_rows(uri))
