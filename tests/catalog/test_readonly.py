"""`cones sql` is read-only: statement types from DuckDB's parser decide (catalog/readonly.py)."""

from __future__ import annotations

import duckdb
import pytest

from catalog import ReadOnlyViolationError, load_catalog
from catalog.readonly import read_only_statements

REFUSED = [
    ("INSERT INTO subjects VALUES ('x', 'y', now())", "INSERT"),
    ("UPDATE subjects SET class_word = 'z'", "UPDATE"),
    ("DELETE FROM subjects", "DELETE"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("DROP VIEW subjects", "DROP"),
    ("ALTER VIEW subjects RENAME TO s2", "ALTER"),
    ("COPY (SELECT 1) TO '{out}/copied.csv'", "COPY"),
    ("EXPORT DATABASE '{out}/exported'", "EXPORT"),
    ("ATTACH '{out}/attached.duckdb' AS other", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "SET"),
    ("PRAGMA threads = 1", "PRAGMA"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL checkpoint()", "CALL"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("SELECT 1; DROP VIEW subjects", "DROP"),  # a write hidden after a read
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "CREATE"),  # EXPLAIN ANALYZE runs its statement
    ("/* harmless */ CREATE MACRO f(x) AS x", "CREATE"),
]

# Each read with what it must return on a catalog holding one subject, "dog" (a reader that returned
# nothing, or the wrong thing, fails here, not only one that raised).
ALLOWED = [
    ("SELECT count(*) AS n FROM subjects", lambda rows: rows == [{"n": 1}]),
    ("WITH s AS (SELECT * FROM subjects) SELECT id, class_word FROM s", lambda rows: rows == [{"id": "dog", "class_word": "dog"}]),
    ("DESCRIBE concept_masks", lambda rows: {"mask_id", "subject", "mask"} <= {r["column_name"] for r in rows}),
    ("SHOW TABLES", lambda rows: {"subjects", "concept_masks", "generations", "clip_scores"} <= {r["name"] for r in rows}),
    ("SUMMARIZE subjects", lambda rows: {r["column_name"] for r in rows} >= {"id", "class_word"}
     and all(r["count"] == 1 for r in rows)),
    ("EXPLAIN SELECT * FROM generations", lambda rows: len(rows) >= 1 and "explain_value" in rows[0]),
    ("PRAGMA table_info('subjects')", lambda rows: {"id", "class_word"} <= {r["name"] for r in rows}),
    ("PRAGMA version", lambda rows: len(rows) == 1 and rows[0]["library_version"].startswith("v")),
    ("SELECT 1 AS a; SELECT 2 AS b", lambda rows: rows == [{"b": 2}]),  # the last statement's rows
]


@pytest.mark.parametrize(("sql", "kind"), REFUSED)
def test_state_changing_statements_are_refused_by_name(tmp_path, sql, kind):
    con = duckdb.connect()
    with pytest.raises(ReadOnlyViolationError, match=kind):
        read_only_statements(con, sql.format(out=tmp_path))


@pytest.mark.parametrize(("sql", "expected"), ALLOWED, ids=[sql for sql, _ in ALLOWED])
def test_reads_run_on_a_catalog_and_return_what_they_read(tmp_path, sql, expected):
    cat = load_catalog(str(tmp_path))
    cat.write_subject("dog", class_word="dog")
    rows = cat.query(sql).to_pylist()
    assert expected(rows), rows


def test_refused_write_changes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cat = load_catalog(str(tmp_path / "catalog"))
    cat.write_subject("dog", class_word="dog")
    for sql, _ in REFUSED:
        with pytest.raises(ReadOnlyViolationError):
            cat.query(sql.format(out=out))
    assert cat.query("SELECT id FROM subjects").to_pylist() == [{"id": "dog"}]
    assert sorted(p.name for p in out.iterdir()) == []
    # The control: the same file-writing statements on a plain DuckDB connection do land in `out`,
    # so the empty folder above is the check's doing, not a wrong path.
    plain = duckdb.connect()
    for sql, kind in REFUSED:
        if kind in ("COPY", "EXPORT", "ATTACH"):
            plain.execute(sql.format(out=out))
    assert sorted(p.name for p in out.iterdir()) == ["attached.duckdb", "copied.csv", "exported"]


def test_unparseable_sql_is_a_clear_error(tmp_path):
    with pytest.raises(ReadOnlyViolationError, match="cannot parse"):
        load_catalog(str(tmp_path)).query("SELEC oops")
