"""Top-level commands registered on `cones` (catalog, sql, export, demo)."""

from cones_cli.app import app  # noqa: F401
