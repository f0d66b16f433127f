"""`cones catalog compact`: merge a table's files into one sorted base file (docs/catalog.md, "How it stays correct").

Steps per table, each safe to crash after:
1. snapshot the live files F;
2. write their deduplicated rows, sorted by primary key, as one base file G
   (named by a hash of F, so a retried compaction of the same F is a no-op);
3. publish a tombstone "G replaces F" — readers listing after it skip F;
4. delete files tombstoned more than `grace_s` ago (readers holding an older
   snapshot keep reading F until then).
Between 2 and 3 readers see F and G together; the views drop the duplicates by
primary key, so no reader ever sees a row twice or misses one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from catalog.catalog import Catalog, _parquet_bytes
from catalog.records import content_key
from catalog.schema import PRIMARY_KEYS, TABLES


@dataclass(frozen=True)
class TableCompaction:
    table: str
    files_before: int
    files_after: int
    rows: int
    deleted: int


def check_tables(tables: list[str] | tuple[str, ...] | None) -> None:
    """Raise ValueError naming every unknown table and the real ones (before any work starts)."""
    unknown = sorted(set(tables or ()) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown catalog tables {unknown}; the tables are {list(TABLES)}")


def compact(catalog: Catalog, *, tables: list[str] | None = None, grace_s: float = 3600.0) -> list[TableCompaction]:
    check_tables(tables)
    out = []
    for table in tables or list(TABLES):
        files = catalog.store.snapshot(table)
        rows = 0
        after = len(files.all)
        if len(files.all) > 1:
            con = catalog.connect([table])
            try:
                pk = ", ".join(PRIMARY_KEYS[table])
                merged = con.sql(f"SELECT * FROM {table} ORDER BY {pk}").to_arrow_table()
            finally:
                con.close()
            key = content_key("compact", table, *sorted(os.path.basename(p) for p in files.all))
            output = catalog.store.publish_base(table, key, _parquet_bytes(merged))
            catalog.store.publish_tombstone(table, replaced=list(files.all), output=output)
            rows, after = merged.num_rows, 1
        deleted = catalog.store.clean(table, grace_s=grace_s)
        out.append(TableCompaction(table, len(files.all), after, rows, deleted))
    return out
