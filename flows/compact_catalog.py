"""`compact-catalog`: merge each table's commit files into one sorted base file, on a schedule.

Every committed batch of a run is one Parquet file; after a large run a table is thousands of
them, and queries pay for each (`cones bench catalog`: a 10 M-row aggregate took 9.3–14.7 s
uncompacted, 0.26–0.48 s compacted; docs/research/bench-catalog.jsonl). Safe beside running writers and readers: the catalog's
compaction (docs/catalog.md) tombstones only the files it merged and deletes them after `grace_s`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from catalog import load_catalog
from catalog.compact import compact
from cones_tasks.config import CompactConfig


@flow(name="compact-catalog")
def compact_catalog(config: CompactConfig) -> list[dict[str, Any]]:
    done = [asdict(t) for t in compact(load_catalog(config.catalog), tables=list(config.tables) or None, grace_s=config.grace_s)]
    create_table_artifact(key="compaction", table=done, description="files per table before and after compaction")
    return done
