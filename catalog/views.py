"""One DuckDB view per table over a snapshot of its live Parquet files.

Duplicates by primary key can exist across files (a batch re-committed with
other rows, or a compaction's output next to its inputs before the tombstone
lands); each view removes them. Deduplicating 10M rows costs DuckDB ~1.5 s,
so the view only does the work it must (target: an aggregate over 10M rows in
≤ 2 s): a compacted base is already unique, so it is anti-joined with the
(small) deduplicated tail of commits since the last compaction.
"""

from __future__ import annotations

import duckdb

from catalog.schema import PRIMARY_KEYS, SCHEMAS, TABLES
from catalog.store import Store, TableFiles


def create_views(con: duckdb.DuckDBPyConnection, store: Store, snapshot: dict[str, TableFiles]) -> None:
    for table in TABLES:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {view_sql(con, store, table, snapshot[table])}")


def view_sql(con: duckdb.DuckDBPyConnection, store: Store, table: str, files: TableFiles) -> str:
    pk = ", ".join(PRIMARY_KEYS[table])
    if not files.all:
        empty = f"__empty_{table}"
        con.register(empty, SCHEMAS[table].empty_table())
        return f"SELECT * FROM {empty}"
    if len(files.base) > 1:  # two compactions overlapped: dedupe everything (correct, slower)
        return f"SELECT DISTINCT ON ({pk}) * FROM {_scan(store, files.all)}"
    tail = ""
    if files.tail:
        tail = _scan(store, files.tail)
        if len(files.tail) > 1:  # one commit file is unique by construction
            tail = f"(SELECT DISTINCT ON ({pk}) * FROM {tail})"
        con.execute(f"CREATE OR REPLACE VIEW __tail_{table} AS SELECT * FROM {tail}")
    if not files.base:
        return f"SELECT * FROM __tail_{table}"
    base = _scan(store, files.base)
    if not files.tail:
        return f"SELECT * FROM {base}"
    return (
        f"SELECT * FROM {base} ANTI JOIN (SELECT {pk} FROM __tail_{table}) USING ({pk}) "
        f"UNION ALL SELECT * FROM __tail_{table}"
    )


def _scan(store: Store, paths: tuple[str, ...]) -> str:
    urls = ", ".join("'" + store.url(p).replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{urls}])"
