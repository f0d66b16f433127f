"""`cones demo` — the README's first command — end to end on the shipped toy model (slow: ~2–3 min)."""

from __future__ import annotations

import pytest

from catalog import load_catalog

pytestmark = pytest.mark.slow


def test_demo_fills_the_catalog_and_its_masks_draw_their_subjects(demo_run):
    out = demo_run  # the `cones demo --json` run (conftest), shared with the browser test of its report
    assert out["generations"] == 56 and (out["workdir"] / "report.html").stat().st_size > 0
    catalog = load_catalog(out["catalog"])
    presence = {
        row["k"]: row["presence"]
        for row in catalog.query(
            "SELECT len(g.subjects) AS k, avg(s.value) AS presence FROM generations g "
            "JOIN clip_scores s ON s.generation = g.id WHERE s.metric = 'presence' GROUP BY ALL"
        ).to_pylist()
    }
    # measured 0.50 for single subjects with the validated 3 % masks (the class prior alone: ~0.05)
    assert presence[1] >= 0.25, presence
    assert catalog.query(out["query"]).num_rows == 10  # the query the demo prints runs as printed
