"""`cones bench select` at a small size: it seeds the run it says, selects all of it, and reports the peaks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cones_cli.app import app


def test_bench_select_selects_the_whole_seeded_run_and_reports_its_peaks():
    result = CliRunner().invoke(app, ["bench", "select", "--items", "4000", "--scored", "1000", "--task-batch", "64", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["score"]["in_grid"] == 4000 and out["score"]["to_score"] == 3000
    assert out["score"]["batches"] == 3999 // 64 - 1000 // 64 + 1 and out["score"]["largest_batch"] == 64  # the unscored tail, cut at fixed positions
    assert out["report"]["combinations"] == 1000 and out["report"]["generations"] == 4000 and out["report"]["kept"] == 200
    assert 0 < out["peak_mb"] == max(out["score"]["peak_mb"], out["report"]["peak_mb"]) < 1024
