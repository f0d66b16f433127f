"""Render query results as csv / json / parquet and write them to any fsspec URI (`cones sql --out`)."""

from __future__ import annotations

import base64
import io
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("table", "csv", "json", "parquet")


def render(table: pa.Table, fmt: str) -> bytes:
    """Bytes of `table` in `fmt` (csv, json or parquet)."""
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(_printable(table), buf)
        return buf.getvalue()
    if fmt == "json":
        return (json.dumps(table.to_pylist(), default=_json_value, indent=1) + "\n").encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_uri(uri: str, data: bytes) -> None:
    """Write bytes to a local path or any fsspec URI, creating parent folders."""
    with fsspec.open(uri, "wb", auto_mkdir=True) as fh:
        fh.write(data)


def cell_text(value: Any) -> str:
    """One cell for the terminal table: blobs summarised, everything else str()."""
    if isinstance(value, (bytes, bytearray)):
        return f"<blob {len(value)} B>"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else str(value)


def _printable(table: pa.Table) -> pa.Table:
    # CSV cannot hold binary or nested columns; write blobs as base64 and lists as JSON.
    cols = []
    for col in table.columns:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            cols.append(pa.array([None if v is None else base64.b64encode(v).decode() for v in col.to_pylist()]))
        elif pa.types.is_nested(col.type):
            cols.append(pa.array([None if v is None else json.dumps(v, default=_json_value) for v in col.to_pylist()]))
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
