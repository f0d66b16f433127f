"""Catalog SQL sees the catalog's tables and nothing else, on every backend (catalog/readonly.py).

One table of hostile queries and filters, each refused with what it tried and why, on file:// and
memory:// catalogs (s3:// in the slow set); then the second layer alone (the locked-down DuckDB
connection) against the reads the first layer exists to stop; then what must keep working.
"""

from __future__ import annotations

import os
import re
import uuid

import duckdb
import pyarrow as pa
import pytest

from catalog import ClipScore, ReadOnlyViolationError

SECRET = "TOP-SECRET-7f3a"
READERS = "reads files or URLs"
NOT_TABLE = "is not a table of this catalog"
FILE_TABLE = "names a file or URL"
ONE_EXPR = "is not one SQL expression"
READ_ONLY = "the catalog SQL is read-only"

# (SQL, what the refusal must name, why it must give). {secret}: a file outside the catalog on the
# catalog's own filesystem; {local}: a local file; {part}: one of the catalog's own Parquet files;
# {blob}: a blob under the catalog root; {out}: a local folder a write would land in.
HOSTILE_QUERIES = [
    ("SELECT * FROM read_text('{secret}')", "read_text", READERS),
    ("SELECT * FROM read_text('{local}')", "read_text", READERS),
    ("SELECT * FROM READ_TEXT('{secret}')", "read_text", READERS),
    ("/* just a look */ FROM read_text('{secret}')", "read_text", READERS),
    ("SELECT * FROM read_text(['{secret}', '{local}'])", "read_text", READERS),
    ("SELECT * FROM read_csv('{secret}', header = false)", "read_csv", READERS),
    ("SELECT * FROM read_csv_auto('{secret}')", "read_csv_auto", READERS),
    ("SELECT * FROM read_json('{secret}')", "read_json", READERS),
    ("SELECT * FROM read_blob('{blob}')", "read_blob", READERS),
    ("SELECT * FROM read_parquet('{part}')", "read_parquet", READERS),
    ("SELECT * FROM parquet_metadata('{part}')", "parquet_metadata", READERS),
    ("SELECT * FROM sniff_csv('{secret}')", "sniff_csv", READERS),
    ("SELECT * FROM glob('{secret_dir}/*')", "glob", READERS),
    ("SELECT * FROM '{secret}'", "{secret}", FILE_TABLE),
    ('SELECT * FROM "{local}"', "{local}", FILE_TABLE),
    ("SELECT * FROM 'https://example.invalid/leak.csv'", "https://example.invalid/leak.csv", FILE_TABLE),
    ("SELECT (SELECT content FROM read_text('{secret}')) AS x", "read_text", READERS),
    ("WITH s AS (SELECT * FROM read_text('{secret}')) SELECT * FROM s", "read_text", READERS),
    ("SELECT * FROM subjects WHERE id IN (SELECT content FROM read_text('{secret}'))", "read_text", READERS),
    ("SELECT * FROM subjects, LATERAL (SELECT * FROM glob('{secret_dir}/*'))", "glob", READERS),
    ("SELECT id FROM subjects UNION ALL SELECT content FROM read_text('{secret}')", "read_text", READERS),
    ("DESCRIBE SELECT * FROM read_text('{secret}')", "read_text", READERS),
    ("EXPLAIN SELECT * FROM read_text('{secret}')", "read_text", READERS),
    ("EXPLAIN ANALYZE SELECT * FROM read_text('{secret}')", "read_text", READERS),
    ("SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')", "query", "runs SQL given as a string"),
    ("SELECT * FROM query_table('subjects')", "query_table", "runs SQL given as a string"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings", "settings, secrets or internals"),
    ("SELECT * FROM system.main.duckdb_secrets()", "duckdb_secrets", "settings, secrets or internals"),
    ("SELECT * FROM which_secret('{secret}', 'read')", "which_secret", "settings, secrets or internals"),
    ("SELECT current_setting('allowed_directories')", "current_setting", "settings"),
    ("SELECT getvariable('x')", "getvariable", "session variables"),
    ("SELECT sleep_ms(60000)", "sleep_ms", "stalls"),
    ("SELECT * FROM secret_rows", "secret_rows", NOT_TABLE),  # a Python variable in the caller's frame
    ("SELECT * FROM __tail_subjects", "__tail_subjects", NOT_TABLE),
    ("SELECT * FROM information_schema.tables", "information_schema.tables", NOT_TABLE),
    ("ATTACH '{out}/other.duckdb' AS other", "ATTACH", READ_ONLY),
    ("COPY (SELECT * FROM subjects) TO '{out}/leak.csv'", "COPY", READ_ONLY),
    ("COPY subjects FROM '{secret}'", "COPY", READ_ONLY),
    ("EXPORT DATABASE '{out}/dump'", "EXPORT", READ_ONLY),
    ("INSTALL httpfs", "LOAD", READ_ONLY),
    ("LOAD httpfs", "LOAD", READ_ONLY),
    ("SET enable_external_access = true", "SET", READ_ONLY),
    ("RESET allowed_directories", "SET", READ_ONLY),
    ("SET VARIABLE x = 1", "SET", READ_ONLY),
    ("PRAGMA enable_profiling", "PRAGMA", "may change state"),
    ("CALL pragma_table_info('subjects')", "CALL", READ_ONLY),
    ("SELECT 1; ATTACH '{out}/other.duckdb' AS other", "ATTACH", READ_ONLY),
    ("SELECT 1; SELECT * FROM read_text('{secret}')", "read_text", READERS),
]

# (filter over `SELECT * FROM subjects`, what the refusal must name, why).
HOSTILE_FILTERS = [
    ("id IN (SELECT content FROM read_text('{secret}'))", "read_text", READERS),
    ("EXISTS (SELECT * FROM glob('{secret_dir}/*'))", "glob", READERS),
    ("id = (SELECT content FROM '{secret}')", "{secret}", FILE_TABLE),
    ("current_setting('threads') IS NOT NULL", "current_setting", "settings"),
    ("true; ATTACH '{out}/other.duckdb' AS other", "ATTACH", ONE_EXPR),
    ("true) UNION SELECT content, 'x', now() FROM read_text('{secret}') WHERE (true", "read_text", ONE_EXPR),
    ("true FROM read_text('{secret}')", "read_text", ONE_EXPR),
    ("true ORDER BY id", "ORDER BY", ONE_EXPR),
    ("id = 'dog', id = 'cat'", "id = 'cat'", ONE_EXPR),
    ("", "empty filter", "one boolean SQL expression"),
]


def _backends():
    return [
        pytest.param("file", id="file"),
        pytest.param("memory", id="memory"),
        pytest.param("s3", id="s3", marks=pytest.mark.slow),
    ]


@pytest.fixture(params=_backends())
def hostile(request, tmp_path):
    """A catalog with rows, plus the places a hostile query would reach for."""
    from catalog import load_catalog

    out = tmp_path / "out"
    out.mkdir()
    local = tmp_path / "secret.txt"
    local.write_text(f"{SECRET},1\n")
    if request.param == "file":
        cat = load_catalog(f"file://{tmp_path}/catalog")
        secret = str(local)
    elif request.param == "memory":
        cat = load_catalog(f"memory://cat-{uuid.uuid4().hex}")
        secret = f"memory:///other-{uuid.uuid4().hex}/secret.csv"
    else:
        import s3fs

        options = request.getfixturevalue("s3_options")
        fs = s3fs.S3FileSystem(**options)
        bucket, other = f"cones-{uuid.uuid4().hex[:12]}", f"other-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.mkdir(other)
        cat = load_catalog(f"s3://{bucket}/catalog", **options)
        secret = f"s3://{other}/secret.csv"
    if secret != str(local):
        cat.store.fs.pipe_file(cat.store.fs._strip_protocol(secret), f"{SECRET},1\n".encode())
    cat.write_subject("dog", class_word="dog")
    cat.write_clip_scores([ClipScore("g1", "image_text", "a dog", 0.25, "toy")])
    blob = cat.put_bytes(SECRET.encode(), suffix=".txt")
    part = cat.store.url(cat.store.snapshot("subjects").all[0])
    values = {
        "secret": secret, "secret_dir": secret.rsplit("/", 1)[0], "local": str(local),
        "part": part, "blob": blob, "out": str(out),
    }
    return cat, values


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


def _assert_refusal(exc: BaseException, what: str, why: str) -> None:
    message = str(exc)
    assert message.startswith("refused"), message
    assert what in message, f"refusal does not name {what!r}: {message}"
    assert why in message, f"refusal does not say why ({why!r}): {message}"
    assert SECRET not in message


def test_the_hostile_table_is_large_enough():
    assert len(HOSTILE_QUERIES) + len(HOSTILE_FILTERS) >= 25


@pytest.mark.parametrize(("sql", "what", "why"), HOSTILE_QUERIES, ids=[f"q{i:02d}" for i in range(len(HOSTILE_QUERIES))])
def test_hostile_query_is_refused_with_its_reason(hostile, sql, what, why):
    cat, values = hostile
    secret_rows = pa.table({"x": [SECRET]})  # noqa: F841 — what a Python replacement scan would find
    with pytest.raises(ReadOnlyViolationError) as info:
        cat.query(_fill(sql, values))
    _assert_refusal(info.value, _fill(what, values), why)
    assert not os.listdir(values["out"]), "a refused statement wrote a file"


@pytest.mark.parametrize(("where", "what", "why"), HOSTILE_FILTERS, ids=[f"f{i:02d}" for i in range(len(HOSTILE_FILTERS))])
def test_hostile_filter_is_refused_with_its_reason(hostile, where, what, why):
    cat, values = hostile
    with pytest.raises(ReadOnlyViolationError) as info:
        cat.query("SELECT * FROM subjects", where=_fill(where, values))
    _assert_refusal(info.value, _fill(what, values), why)
    assert not os.listdir(values["out"])


# The second layer alone: SQL run straight on `Catalog.connect()`, with no statement check.
# DuckDB itself must refuse everything outside the catalog's tables/ folder.
RAW = [
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_text('{local}')",
    "SELECT * FROM read_csv('{secret}', header = false)",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('{secret_dir}/*')",
    "SELECT * FROM read_blob('{blob}')",
    "SELECT * FROM read_text('{tables}/../../secret.txt')",
    "COPY (SELECT 1) TO '{out}/leak.csv'",
    "ATTACH '{out}/other.duckdb' AS other",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "LOAD httpfs",
    "SELECT * FROM secret_rows",
]


@pytest.mark.parametrize("sql", RAW, ids=[f"raw{i:02d}" for i in range(len(RAW))])
def test_connection_itself_refuses_outside_reads(hostile, sql):
    cat, values = hostile
    values = {**values, "tables": cat.store.url(cat.store.tables_root)}
    secret_rows = pa.table({"x": [SECRET]})  # noqa: F841
    con = cat.connect()
    try:
        with pytest.raises(duckdb.Error) as info:
            rows = con.sql(_fill(sql, values))
            if rows is not None:
                rows.fetchall()
        assert re.search(r"disabled (by|through) configuration|configuration has been locked|does not exist", str(info.value)), info.value
        # The views still read, and the settings are as lock_down left them.
        assert con.sql("SELECT id FROM subjects").fetchall() == [("dog",)]
        assert con.sql("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
    finally:
        con.close()
    assert not os.listdir(values["out"])


ALLOWED = [
    ("SELECT id, class_word FROM subjects", [{"id": "dog", "class_word": "dog"}]),
    ("WITH s AS (SELECT id FROM subjects) SELECT count(*) AS n FROM s", [{"n": 1}]),
    ("SELECT sum(range) AS n FROM range(4)", [{"n": 6}]),
    ("SELECT count(*) AS n FROM generate_series(1, 3)", [{"n": 3}]),
    ("SELECT x FROM unnest([3, 4]) AS t(x) ORDER BY x", [{"x": 3}, {"x": 4}]),
    ("SELECT key FROM json_each('{\"a\": 1}')", [{"key": "a"}]),
    ("SELECT upper(id) AS id, len(id) AS n, md5(id) = md5('dog') AS same FROM subjects", [{"id": "DOG", "n": 3, "same": True}]),
    ("SELECT generation FROM clip_scores WHERE generation IN (SELECT 'g1')", [{"generation": "g1"}]),
    ("SELECT * FROM subjects PIVOT (count(*) FOR class_word IN ('dog'))", None),
    ("SHOW TABLES", None),
    ("DESCRIBE subjects", None),
    ("SUMMARIZE clip_scores", None),
    ("EXPLAIN SELECT * FROM subjects", None),
    ("PRAGMA table_info('subjects')", None),
]


@pytest.mark.parametrize(("sql", "rows"), ALLOWED, ids=[f"ok{i:02d}" for i in range(len(ALLOWED))])
def test_the_sandbox_still_reads_the_catalog(hostile, sql, rows):
    cat, _ = hostile
    result = cat.query(sql)
    assert result.num_rows > 0
    if rows is not None:
        assert [{k: r[k] for k in rows[0]} for r in result.to_pylist()] == rows


def test_filters_over_the_catalog_still_work(hostile):
    cat, _ = hostile
    assert cat.query("SELECT id FROM subjects", where="id = 'dog'").to_pylist() == [{"id": "dog"}]
    assert cat.query("SELECT id FROM subjects", where="id IN (SELECT 'cat')").num_rows == 0
    hits = cat.query("SELECT generation, value FROM clip_scores", where="value > 0.2 AND generation IN (SELECT generation FROM clip_scores)")
    assert hits.to_pylist() == [{"generation": "g1", "value": 0.25}]
