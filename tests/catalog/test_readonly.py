"""`cones sql` is read-only (issue #5, item 4): statement types from DuckDB's parser decide."""

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
    ("COPY (SELECT 1) TO '/tmp/cones-should-not-exist.csv'", "COPY"),
    ("EXPORT DATABASE '/tmp/cones-should-not-exist'", "EXPORT"),
    ("ATTACH '/tmp/cones-should-not-exist.duckdb' AS other", "ATTACH"),
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

ALLOWED = [
    "SELECT count(*) FROM subjects",
    "WITH s AS (SELECT * FROM subjects) SELECT * FROM s",
    "DESCRIBE concept_masks",
    "SHOW TABLES",
    "SUMMARIZE subjects",
    "EXPLAIN SELECT * FROM generations",
    "PRAGMA table_info('subjects')",
    "PRAGMA version",
    "SELECT 1; SELECT 2",
]


@pytest.mark.parametrize(("sql", "kind"), REFUSED)
def test_state_changing_statements_are_refused_by_name(sql, kind):
    con = duckdb.connect()
    with pytest.raises(ReadOnlyViolationError, match=kind):
        read_only_statements(con, sql)


@pytest.mark.parametrize("sql", ALLOWED)
def test_reads_run_on_a_catalog(tmp_path, sql):
    cat = load_catalog(str(tmp_path))
    cat.write_subject("dog", class_word="dog")
    cat.query(sql)


def test_refused_write_changes_nothing(tmp_path):
    cat = load_catalog(str(tmp_path))
    cat.write_subject("dog", class_word="dog")
    for sql, _ in REFUSED:
        with pytest.raises(ReadOnlyViolationError):
            cat.query(sql)
    assert cat.query("SELECT id FROM subjects").to_pylist() == [{"id": "dog"}]
    assert not list(tmp_path.glob("cones-should-not-exist*"))


def test_unparseable_sql_is_a_clear_error(tmp_path):
    with pytest.raises(ReadOnlyViolationError, match="cannot parse"):
        load_catalog(str(tmp_path)).query("SELEC oops")
