"""Read-only SQL (issue #5, "cones sql"): refuse anything that changes state.

Statement types come from DuckDB's own parser (`extract_statements`), not from
regexes over the text, so comments, CTEs and odd spacing cannot smuggle a
write past the check. Allowed: SELECT (incl. DESCRIBE / SHOW / SUMMARIZE, which
DuckDB parses as SELECT), EXPLAIN of an allowed statement (EXPLAIN ANALYZE runs
its statement, so the inner statement is checked too), and PRAGMAs that only
report. Refused with a clear error: INSERT/UPDATE/DELETE, CREATE/DROP/ALTER,
COPY, EXPORT, ATTACH/DETACH, INSTALL/LOAD, SET/RESET/USE, CALL, transactions,
VACUUM and anything else.
"""

from __future__ import annotations

import re

import duckdb

from catalog.errors import ReadOnlyViolationError

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

_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(analyze\s+)?", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*pragma\s+(\w+)\s*(=)?", re.IGNORECASE)


def read_only_statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """Split `sql` into statements, raising ReadOnlyViolationError if any would change state."""
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


def _check(con: duckdb.DuckDBPyConnection, st: object) -> None:
    kind = st.type.name  # type: ignore[attr-defined]
    text = st.query.strip()  # type: ignore[attr-defined]
    if kind == "SELECT":
        return
    if kind == "EXPLAIN":
        inner = _EXPLAIN_PREFIX.sub("", text, count=1)
        for sub in con.extract_statements(inner):
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
    raise ReadOnlyViolationError(
        f"refused: `{_short(text)}` is a {kind} statement and the catalog SQL is read-only "
        "(SELECT, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE only). Write through the catalog API or the flows; "
        "save results with `cones sql ... --out URI`."
    )


def _short(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
