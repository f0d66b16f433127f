"""Top-level commands registered on `cones` (catalog, sql, export, demo)."""

from cones_cli.app import app  # noqa: F401
from cones_cli import catalog_cmds  # noqa: E402,F401  (cones sql, cones catalog compact)
from cones_cli import flow_cmds  # noqa: E402,F401  (cones run, cones export, cones demo)
from cones_cli import config_cmds  # noqa: E402,F401  (cones config schema|example|docs)
from cones_cli import init_cmd  # noqa: E402,F401  (cones init)
