"""Shared output helpers for CLI commands."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def emit(result: Any, *, as_json: bool, title: str = "") -> None:
    """Print a result dict as JSON (machine-readable) or as a rich table."""
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False, default=float))
        return
    table = Table(title=title or None)
    table.add_column("key")
    table.add_column("value")
    for key, value in _flatten(result):
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def _flatten(obj: Any, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), obj
