"""Read-only, sandboxed SQL over the catalog (`cones sql`, `Catalog.query`, `cones export --where`).

A query sees the catalog's tables, the mask_* functions and DuckDB's built-in functions, and
nothing else: no files, URLs or other buckets, no settings, environment or extensions. Two layers,
both decided by DuckDB itself, not by regexes over the text:

1. The text is checked before anything runs (`read_only_statements`, `filter_expression`):
   - Statement types come from DuckDB's parser (`extract_statements`), so comments, CTEs and odd
     spacing cannot smuggle a write past the check. Allowed: SELECT (incl. DESCRIBE / SHOW /
     SUMMARIZE, which DuckDB parses as SELECT), EXPLAIN of an allowed statement (EXPLAIN ANALYZE
     runs its statement, so the inner one is checked too), and PRAGMAs that only report. Refused:
     INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, COPY, EXPORT, ATTACH/DETACH, INSTALL/LOAD,
     SET/RESET/USE, CALL, transactions, VACUUM and anything else.
   - What a SELECT reads comes from its parse tree, which DuckDB hands over as JSON
     (`json_serialize_sql`, https://duckdb.org/docs/stable/data/json/sql_to_and_from_json): every
     table it names must be a catalog table or one of its own CTEs (a quoted path such as
     `FROM '/etc/passwd'` would otherwise be read by a replacement scan), every table function one
     of TABLE_FUNCTIONS (generators; `read_*`, `glob`, `query`, `duckdb_*` are refused), and no
     function may be one of REFUSED_FUNCTIONS (settings, variables, environment, sleeping).
     A statement whose tree DuckDB cannot serialise is refused: what is not checked does not run.
   - A filter (`cones export --where`) is parsed by DuckDB as one expression
     (`duckdb.SQLExpression`), never pasted into a statement, and checked the same way.
2. The connection is locked down once its views exist (`lock_down`), as "Securing DuckDB"
   describes (https://duckdb.org/docs/stable/operations_manual/securing_duckdb/overview):
   `enable_external_access = false`, with `allowed_directories` naming only the catalog's
   `tables/` folder (views read their Parquet files when queried, so DuckDB must still reach
   those, through whichever fsspec filesystem the connection registered: file, memory, s3), no
   extension auto-install or auto-load, no scans of Python variables, then
   `lock_configuration = true`, so no statement can turn any of it back. SQL that got past the
   first layer still cannot open a file outside that folder.

Every refusal is a ReadOnlyViolationError that names what was refused and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

from catalog.errors import ReadOnlyViolationError
from catalog.schema import TABLES

READ_ONLY_PRAGMAS = frozenset(
    {
        "version",
        "platform",
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "functions",
        "collations",
        "metadata_info",
        "storage_info",
        "user_agent",
    }
)

# Table functions that only generate or unpack values given to them.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})

# Built-in scalar functions and macros that reach past the query's own values.
REFUSED_FUNCTIONS = {
    "current_setting": "reads the connection's settings",
    "getenv": "reads the process environment (where credentials live)",
    "getvariable": "reads session variables",
    "sleep_ms": "only stalls the process",
    "pg_sleep": "only stalls the process",
}

# Table functions refused with a reason more useful than "not allowed".
_FILE_READERS = re.compile(r"^(read_|parquet_|sniff_csv$|glob$|iceberg_|delta_|sqlite_|postgres_|mysql_)")
_SQL_RUNNERS = frozenset({"query", "query_table", "json_execute_serialized_sql"})

_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(analyze\s+)?", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*pragma\s+(\w+)\s*(=)?", re.IGNORECASE)
_PATH_LIKE = re.compile(r"[/\\:.~]")

_SCOPE = (
    f"catalog SQL reads only the catalog's tables ({', '.join(TABLES)}), the mask_* functions and "
    "DuckDB's built-in functions"
)


def read_only_statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """Split `sql` into statements, raising ReadOnlyViolationError if any would change state or read outside the catalog."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyViolationError(f"cannot parse SQL: {exc}") from exc
    if not statements:
        raise ReadOnlyViolationError("no SQL statement given")
    out = []
    for st in statements:
        _check(con, st)
        out.append(st.query)
    return out


def filter_expression(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.Expression:
    """`text` parsed by DuckDB as one expression (a row filter), checked like a query.

    Raises ReadOnlyViolationError for anything but a single expression (a second statement, a
    FROM, ORDER BY or UNION after it) and for expressions that read outside the catalog.
    """
    example = "e.g. \"presence = 1 AND len(subjects) = 2\""
    if not text.strip():
        raise ReadOnlyViolationError(f"refused: an empty filter; give one boolean SQL expression ({example}), or 'true' for every row")
    try:
        expr = duckdb.SQLExpression(text)
    except duckdb.Error as exc:
        raise ReadOnlyViolationError(
            f"refused: filter `{_short(text)}` is not one SQL expression ({_first_line(exc)}); "
            f"a filter is a single boolean expression over the row's columns, {example}"
        ) from exc
    # The rendering of the parsed expression, not the user's text, is what gets inspected.
    tree = _parse_tree(con, f"SELECT {expr}")
    (node,) = tree["statements"]
    node = node["node"]
    if node.get("type") != "SELECT_NODE" or len(node["select_list"]) != 1 or node["from_table"]["type"] != "EMPTY":
        raise ReadOnlyViolationError(f"refused: filter `{_short(text)}` is not one SQL expression; {example}")
    _check_tree(tree, text)
    return expr


def lock_down(con: duckdb.DuckDBPyConnection, *, readable: Sequence[str]) -> None:
    """Let `con` open only files under the `readable` prefixes, for good (layer 2 above).

    Call it after registering filesystems, functions and views; views can still be replaced
    afterwards (the shared lookup connection refreshes them), but no setting can change.
    """
    dirs = ", ".join("'" + d.replace("'", "''") + "'" for d in readable)
    con.execute(f"SET allowed_directories = [{dirs}]")  # must precede enable_external_access = false
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET python_enable_replacements = false")  # `FROM df` would read a caller's Python variable
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


# ---------------------------------------------------------------- statements


def _check(con: duckdb.DuckDBPyConnection, st: Any) -> None:
    kind = st.type.name
    text = st.query.strip()
    if kind == "SELECT":
        _check_tree(_parse_tree(con, text), text)
        return
    if kind == "EXPLAIN":
        inner = _EXPLAIN_PREFIX.sub("", text, count=1)
        try:
            statements = con.extract_statements(inner)
        except duckdb.Error as exc:
            raise ReadOnlyViolationError(
                f"refused: `{_short(text)}` — cannot tell which statement this EXPLAIN runs ({_first_line(exc)}); "
                "write EXPLAIN [ANALYZE] SELECT …"
            ) from exc
        for sub in statements:
            _check(con, sub)
        return
    if kind == "PRAGMA":
        m = _PRAGMA.match(text)
        if m and m.group(1).lower() in READ_ONLY_PRAGMAS and not m.group(2):
            return
        raise ReadOnlyViolationError(
            f"refused: `{_short(text)}` — this PRAGMA may change state and the catalog SQL is read-only. "
            f"Allowed PRAGMAs: {', '.join(sorted(READ_ONLY_PRAGMAS))}."
        )
    hint = ""
    if kind == "MULTI":  # DuckDB expands a PIVOT without an IN list into CREATE TYPE + SELECT
        hint = " (a PIVOT without an IN list creates types first: list the values, PIVOT … ON col IN (…))"
    raise ReadOnlyViolationError(
        f"refused: `{_short(text)}` is a {kind} statement and the catalog SQL is read-only "
        f"(SELECT, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE only){hint}. Write through the catalog API or the flows; "
        "save results with `cones sql ... --out URI`."
    )


# ---------------------------------------------------------------- what a SELECT reads


def _parse_tree(con: duckdb.DuckDBPyConnection, text: str) -> dict[str, Any]:
    (row,) = con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()
    tree = json.loads(row[0])
    if tree.get("error"):
        raise ReadOnlyViolationError(
            f"refused: `{_short(text)}` — DuckDB cannot hand over its parse tree ({tree.get('error_message')}), "
            f"so the sandbox cannot check what it reads; {_SCOPE}"
        )
    return tree


def _check_tree(tree: dict[str, Any], text: str) -> None:
    ctes = {entry["key"].lower() for node in _nodes(tree) for entry in (node.get("cte_map") or {}).get("map", [])}
    for node in _nodes(tree):
        if node.get("type") == "TABLE_FUNCTION":
            _check_table_function(str((node.get("function") or {}).get("function_name", "")).lower(), text)
        elif node.get("type") == "BASE_TABLE":
            _check_table(node, ctes, text)
        name = str(node.get("function_name", "")).lower()
        if name in REFUSED_FUNCTIONS:
            raise ReadOnlyViolationError(
                f"refused: `{_short(text)}` calls {name}(), which {REFUSED_FUNCTIONS[name]}; {_SCOPE}"
            )


def _check_table_function(name: str, text: str) -> None:
    if name in TABLE_FUNCTIONS:
        return
    if _FILE_READERS.match(name):
        why = "reads files or URLs"
    elif name in _SQL_RUNNERS:
        why = "runs SQL given as a string, which the read-only check cannot see"
    elif name.startswith(("duckdb_", "pragma_", "which_secret")):
        why = "reports the connection's settings, secrets or internals"
    else:
        why = "is a table function outside the sandbox"
    raise ReadOnlyViolationError(
        f"refused: `{_short(text)}` calls the table function {name}(), which {why}; {_SCOPE} "
        f"(table functions allowed: {', '.join(sorted(TABLE_FUNCTIONS))})"
    )


def _check_table(node: dict[str, Any], ctes: set[str], text: str) -> None:
    name = node.get("table_name", "")
    schema, database = node.get("schema_name", ""), node.get("catalog_name", "")
    if name.lower() in ctes and not schema and not database:
        return
    if name.lower() in TABLES and schema in ("", "main") and database in ("", "memory"):
        return
    qualified = ".".join(p for p in (database, schema, name) if p)
    if _PATH_LIKE.search(name):
        why = "names a file or URL, which DuckDB would read as a table"
    else:
        why = "is not a table of this catalog"
    raise ReadOnlyViolationError(f"refused: `{_short(text)}` — `{qualified}` {why}; {_SCOPE}")


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a parse tree, parents before children."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _nodes(child)
    elif isinstance(value, list):
        for child in value:
            yield from _nodes(child)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _short(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
