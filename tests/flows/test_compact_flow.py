"""`compact-catalog` under a real Prefect API on a real on-disk catalog (issue #6: compaction on a schedule)."""

from __future__ import annotations

import pytest

from catalog import ClipScore, load_catalog
from cones_tasks.config import CompactConfig


def test_compaction_flow_merges_commit_files_and_keeps_every_row(prefect_api, tmp_path):
    from flows.compact_catalog import compact_catalog

    catalog = load_catalog(str(tmp_path / "cat"))
    for i in range(5):  # five runs' worth of commits
        catalog.write_clip_scores([ClipScore(f"g{i}", "presence", t, float(i), "judge") for t in ("a", "b")])
    catalog.write_subject("s0", class_word="circle")
    assert len(catalog.store.snapshot("clip_scores").all) == 5

    done = {t["table"]: t for t in compact_catalog(CompactConfig(catalog=str(tmp_path / "cat"), grace_s=0))}
    assert (done["clip_scores"]["files_before"], done["clip_scores"]["files_after"], done["clip_scores"]["rows"]) == (5, 1, 10)
    assert done["subjects"]["files_after"] == 1
    assert len(catalog.store.snapshot("clip_scores").all) == 1
    assert catalog.query("SELECT count(*) AS n, sum(value) AS s FROM clip_scores").to_pylist() == [{"n": 10, "s": 20.0}]
    again = compact_catalog(CompactConfig(catalog=str(tmp_path / "cat"), tables=("clip_scores",), grace_s=0))
    assert [(t["files_before"], t["files_after"]) for t in again] == [(1, 1)]  # a rerun is a no-op


def test_unknown_table_is_named_before_anything_is_touched(prefect_api, tmp_path):
    from flows.compact_catalog import compact_catalog

    with pytest.raises(ValueError, match=r"unknown catalog tables \['clip_score'\]; the tables are"):
        compact_catalog(CompactConfig(catalog=str(tmp_path / "cat"), tables=("clip_score",)))
